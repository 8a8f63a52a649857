//! The libraries Redis 7.0 gives scripts besides Lua's own: `bit` (LuaBitOp),
//! `cjson` (lua-cjson), `cmsgpack` (lua-cmsgpack) and `struct` (lua_struct),
//! written here with the same results as Redis's C versions for what scripts
//! use (the same number formats, escapes, array/map decisions, encodings and
//! layouts).

use mlua::{Lua, LuaString, MultiValue, Table, Value, Variadic};

/// Installs `bit`, `cjson`, `cmsgpack` and `struct` as globals.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.raw_set("struct", structs(lua)?)?;
    globals.raw_set("bit", bit(lua)?)?;
    globals.raw_set("cjson", cjson(lua)?)?;
    globals.raw_set("cmsgpack", cmsgpack(lua)?)?;
    Ok(())
}

/// LuaBitOp's conversion of a number to a 32-bit integer.
fn to_bit(n: f64) -> i32 {
    if !n.is_finite() {
        return 0;
    }
    n.round_ties_even().rem_euclid(4_294_967_296.0) as u32 as i32
}

fn bit(lua: &Lua) -> mlua::Result<Table> {
    let bit = lua.create_table()?;
    let unary = |f: fn(i32) -> i32| lua.create_function(move |_, n: f64| Ok(f64::from(f(to_bit(n)))));
    let fold = |f: fn(i32, i32) -> i32| {
        lua.create_function(move |_, (first, rest): (f64, Variadic<f64>)| {
            Ok(f64::from(rest.iter().fold(to_bit(first), |acc, &n| f(acc, to_bit(n)))))
        })
    };
    let shift = |f: fn(i32, u32) -> i32| {
        lua.create_function(move |_, (n, by): (f64, f64)| Ok(f64::from(f(to_bit(n), to_bit(by) as u32 & 31))))
    };
    bit.raw_set("tobit", unary(|x| x)?)?;
    bit.raw_set("bnot", unary(|x| !x)?)?;
    bit.raw_set("bswap", unary(i32::swap_bytes)?)?;
    bit.raw_set("band", fold(|a, b| a & b)?)?;
    bit.raw_set("bor", fold(|a, b| a | b)?)?;
    bit.raw_set("bxor", fold(|a, b| a ^ b)?)?;
    bit.raw_set("lshift", shift(|x, n| ((x as u32) << n) as i32)?)?;
    bit.raw_set("rshift", shift(|x, n| ((x as u32) >> n) as i32)?)?;
    bit.raw_set("arshift", shift(|x, n| x >> n)?)?;
    bit.raw_set("rol", shift(|x, n| (x as u32).rotate_left(n) as i32)?)?;
    bit.raw_set("ror", shift(|x, n| (x as u32).rotate_right(n) as i32)?)?;
    bit.raw_set(
        "tohex",
        lua.create_function(|_, (n, digits): (f64, Option<f64>)| {
            let digits = digits.map_or(8, to_bit);
            let upper = digits < 0;
            let count = digits.unsigned_abs().min(8) as usize;
            let value = to_bit(n) as u32 as u64;
            let text = if upper {
                format!("{value:08X}")
            } else {
                format!("{value:08x}")
            };
            Ok(text[8 - count..].to_string())
        })?,
    )?;
    Ok(bit)
}

/// lua-cjson's `cjson.null`: a light userdata holding NULL.
fn json_null() -> Value {
    Value::LightUserData(mlua::LightUserData(std::ptr::null_mut()))
}

fn cjson(lua: &Lua) -> mlua::Result<Table> {
    let cjson = lua.create_table()?;
    cjson.raw_set("null", json_null())?;
    cjson.raw_set(
        "encode",
        lua.create_function(|lua, value: Value| {
            let mut out = Vec::new();
            encode_json(lua, &value, 0, &mut out).map_err(mlua::Error::runtime)?;
            lua.create_string(out)
        })?,
    )?;
    cjson.raw_set(
        "decode",
        lua.create_function(|lua, text: LuaString| {
            let value: serde_json::Value = serde_json::from_slice(&text.as_bytes()).map_err(|e| {
                mlua::Error::runtime(format!(
                    "Expected value but found invalid token at character {}",
                    e.column().max(1)
                ))
            })?;
            json_to_lua(lua, &value)
        })?,
    )?;
    Ok(cjson)
}

/// How lua-cjson sees a table: an array of `n` items, or an object.
fn array_length(table: &Table) -> Result<Option<usize>, String> {
    let (mut max, mut items) = (0usize, 0usize);
    for pair in table.pairs::<Value, Value>() {
        let (key, _) = pair.map_err(|e| e.to_string())?;
        match key {
            Value::Integer(k) if k >= 1 => max = max.max(k as usize),
            Value::Number(k) if k >= 1.0 && k.fract() == 0.0 => max = max.max(k as usize),
            _ => return Ok(None),
        }
        items += 1;
    }
    // lua-cjson's defaults: an array may have holes unless it is "excessively
    // sparse" (more than twice as long as its items, and longer than 10).
    if max > items * 2 && max > 10 {
        return Err("Cannot serialise table: excessively sparse array".into());
    }
    Ok(Some(max))
}

fn encode_json(lua: &Lua, value: &Value, depth: usize, out: &mut Vec<u8>) -> Result<(), String> {
    match value {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::LightUserData(p) if p.0.is_null() => out.extend_from_slice(b"null"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Integer(_) | Value::Number(_) => {
            let n = match value {
                Value::Integer(i) => *i as f64,
                Value::Number(n) => *n,
                _ => unreachable!("matched above"),
            };
            if !n.is_finite() {
                return Err("Cannot serialise number: must not be NaN or Inf".into());
            }
            out.extend_from_slice(&lua_number_text(lua, n));
        }
        Value::String(s) => escape_json(&s.as_bytes(), out),
        Value::Table(table) => {
            if depth >= 1000 {
                return Err(format!("Cannot serialise, excessive nesting ({})", depth + 1));
            }
            match array_length(table)? {
                Some(n) if n > 0 => {
                    out.push(b'[');
                    for i in 1..=n {
                        if i > 1 {
                            out.push(b',');
                        }
                        let item: Value = table.raw_get(i).map_err(|e| e.to_string())?;
                        encode_json(lua, &item, depth + 1, out)?;
                    }
                    out.push(b']');
                }
                _ => {
                    out.push(b'{');
                    let mut first = true;
                    for pair in table.pairs::<Value, Value>() {
                        let (key, item) = pair.map_err(|e| e.to_string())?;
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        match &key {
                            Value::String(s) => escape_json(&s.as_bytes(), out),
                            Value::Integer(_) | Value::Number(_) => {
                                let text = lua.coerce_string(key.clone()).ok().flatten().ok_or("bad key")?;
                                escape_json(&text.as_bytes(), out);
                            }
                            _ => return Err("Cannot serialise table: table key must be a number or string".into()),
                        }
                        out.push(b':');
                        encode_json(lua, &item, depth + 1, out)?;
                    }
                    out.push(b'}');
                }
            }
        }
        other => return Err(format!("Cannot serialise {}: type not supported", other.type_name())),
    }
    Ok(())
}

/// A number as Lua prints it (`%.14g`).
fn lua_number_text(lua: &Lua, n: f64) -> Vec<u8> {
    lua.coerce_string(Value::Number(n))
        .ok()
        .flatten()
        .map_or_else(|| n.to_string().into_bytes(), |s| s.as_bytes().to_vec())
}

/// A JSON string with lua-cjson's escapes (`/` included).
fn escape_json(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.extend_from_slice(b"\\/"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn json_to_lua(lua: &Lua, value: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match value {
        serde_json::Value::Null => json_null(),
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, json_to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        serde_json::Value::Object(fields) => {
            let table = lua.create_table_with_capacity(0, fields.len())?;
            for (key, item) in fields {
                table.raw_set(key.as_str(), json_to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
    })
}

fn cmsgpack(lua: &Lua) -> mlua::Result<Table> {
    let cmsgpack = lua.create_table()?;
    cmsgpack.raw_set(
        "pack",
        lua.create_function(|lua, values: MultiValue| {
            if values.is_empty() {
                return Err(mlua::Error::runtime("MessagePack pack needs input."));
            }
            let mut out = Vec::new();
            for value in values.iter() {
                pack(value, 0, &mut out);
            }
            lua.create_string(out)
        })?,
    )?;
    cmsgpack.raw_set(
        "unpack",
        lua.create_function(|lua, data: LuaString| {
            let bytes = data.as_bytes();
            let mut input: &[u8] = &bytes;
            let mut values = Vec::new();
            while !input.is_empty() {
                values.push(unpack(lua, &mut input, 0)?);
            }
            Ok(MultiValue::from_vec(values))
        })?,
    )?;
    Ok(cmsgpack)
}

/// lua-cmsgpack's encoding of one value (nesting beyond 16 levels packs nil).
fn pack(value: &Value, depth: usize, out: &mut Vec<u8>) {
    match value {
        Value::Nil => out.push(0xc0),
        Value::Boolean(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Integer(i) => pack_int(*i, out),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.2e18 => pack_int(*n as i64, out),
        Value::Number(n) => {
            let f = *n as f32;
            if f64::from(f) == *n {
                out.push(0xca);
                out.extend_from_slice(&f.to_be_bytes());
            } else {
                out.push(0xcb);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        Value::String(s) => {
            let bytes = s.as_bytes();
            let len = bytes.len();
            if len < 32 {
                out.push(0xa0 | len as u8);
            } else if len <= 0xff {
                out.extend_from_slice(&[0xd9, len as u8]);
            } else if len <= 0xffff {
                out.push(0xda);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                out.push(0xdb);
                out.extend_from_slice(&(len as u32).to_be_bytes());
            }
            out.extend_from_slice(&bytes);
        }
        Value::Table(table) if depth < 16 => match msgpack_array_length(table) {
            Some(n) => {
                pack_header(n, 0x90, 0xdc, 0xdd, out);
                for i in 1..=n {
                    pack(&table.raw_get::<Value>(i).unwrap_or(Value::Nil), depth + 1, out);
                }
            }
            None => {
                let pairs: Vec<(Value, Value)> = table.pairs::<Value, Value>().filter_map(Result::ok).collect();
                pack_header(pairs.len(), 0x80, 0xde, 0xdf, out);
                for (key, item) in &pairs {
                    pack(key, depth + 1, out);
                    pack(item, depth + 1, out);
                }
            }
        },
        _ => out.push(0xc0),
    }
}

/// lua-cmsgpack's test: keys exactly 1..n.
fn msgpack_array_length(table: &Table) -> Option<usize> {
    let (mut max, mut count) = (0usize, 0usize);
    for (key, _) in table.pairs::<Value, Value>().filter_map(Result::ok) {
        match key {
            Value::Integer(k) if k >= 1 => max = max.max(k as usize),
            Value::Number(k) if k >= 1.0 && k.fract() == 0.0 => max = max.max(k as usize),
            _ => return None,
        }
        count += 1;
    }
    (max == count).then_some(count)
}

fn pack_header(n: usize, fix: u8, sixteen: u8, thirty_two: u8, out: &mut Vec<u8>) {
    if n <= 15 {
        out.push(fix | n as u8);
    } else if n <= 0xffff {
        out.push(sixteen);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(thirty_two);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn pack_int(n: i64, out: &mut Vec<u8>) {
    if n >= 0 {
        if n <= 127 {
            out.push(n as u8);
        } else if n <= 0xff {
            out.extend_from_slice(&[0xcc, n as u8]);
        } else if n <= 0xffff {
            out.push(0xcd);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n <= 0xffff_ffff {
            out.push(0xce);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    } else if n >= -32 {
        out.push(n as i8 as u8);
    } else if n >= -128 {
        out.extend_from_slice(&[0xd0, n as i8 as u8]);
    } else if n >= -32768 {
        out.push(0xd1);
        out.extend_from_slice(&(n as i16).to_be_bytes());
    } else if n >= -(1 << 31) {
        out.push(0xd2);
        out.extend_from_slice(&(n as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn truncated() -> mlua::Error {
    mlua::Error::runtime("Missing bytes in input.")
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> mlua::Result<&'a [u8]> {
    if input.len() < n {
        return Err(truncated());
    }
    let (taken, rest) = input.split_at(n);
    *input = rest;
    Ok(taken)
}

fn be(input: &mut &[u8], n: usize) -> mlua::Result<u64> {
    Ok(take(input, n)?.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
}

/// Decodes one MessagePack object.
fn unpack(lua: &Lua, input: &mut &[u8], depth: usize) -> mlua::Result<Value> {
    if depth > 1000 {
        return Err(mlua::Error::runtime("Too deep MessagePack input."));
    }
    let tag = take(input, 1)?[0];
    let number = |n: f64| Ok(Value::Number(n));
    match tag {
        0x00..=0x7f => number(f64::from(tag)),
        0xe0..=0xff => number(f64::from(tag as i8)),
        0xc0 => Ok(Value::Nil),
        0xc2 => Ok(Value::Boolean(false)),
        0xc3 => Ok(Value::Boolean(true)),
        0xcc => number(be(input, 1)? as f64),
        0xcd => number(be(input, 2)? as f64),
        0xce => number(be(input, 4)? as f64),
        0xcf => number(be(input, 8)? as f64),
        0xd0 => number(f64::from(be(input, 1)? as u8 as i8)),
        0xd1 => number(f64::from(be(input, 2)? as u16 as i16)),
        0xd2 => number(f64::from(be(input, 4)? as u32 as i32)),
        0xd3 => number(be(input, 8)? as i64 as f64),
        0xca => number(f64::from(f32::from_bits(be(input, 4)? as u32))),
        0xcb => number(f64::from_bits(be(input, 8)?)),
        0xa0..=0xbf | 0xd9 | 0xda | 0xdb | 0xc4 | 0xc5 | 0xc6 => {
            let len = match tag {
                0xa0..=0xbf => usize::from(tag & 0x1f),
                0xd9 | 0xc4 => be(input, 1)? as usize,
                0xda | 0xc5 => be(input, 2)? as usize,
                _ => be(input, 4)? as usize,
            };
            Ok(Value::String(lua.create_string(take(input, len)?)?))
        }
        0x90..=0x9f | 0xdc | 0xdd => {
            let len = match tag {
                0x90..=0x9f => usize::from(tag & 0x0f),
                0xdc => be(input, 2)? as usize,
                _ => be(input, 4)? as usize,
            };
            let table = lua.create_table_with_capacity(len.min(1 << 16), 0)?;
            for i in 1..=len {
                table.raw_set(i, unpack(lua, input, depth + 1)?)?;
            }
            Ok(Value::Table(table))
        }
        0x80..=0x8f | 0xde | 0xdf => {
            let len = match tag {
                0x80..=0x8f => usize::from(tag & 0x0f),
                0xde => be(input, 2)? as usize,
                _ => be(input, 4)? as usize,
            };
            let table = lua.create_table()?;
            for _ in 0..len {
                let key = unpack(lua, input, depth + 1)?;
                let value = unpack(lua, input, depth + 1)?;
                if !key.is_nil() {
                    table.raw_set(key, value)?;
                }
            }
            Ok(Value::Table(table))
        }
        _ => Err(mlua::Error::runtime("Bad data format in input.")),
    }
}

/// One item of a `struct` format.
enum Item {
    /// An integer of `size` bytes.
    Int {
        size: usize,
        signed: bool,
    },
    Float,
    Double,
    /// `s`: a zero-terminated string.
    ZeroTerminated,
    /// `cN`: N bytes (0: the whole string when packing, the previous value's
    /// count when unpacking).
    Chars(usize),
    /// `x`: one zero byte.
    Padding,
}

/// A parsed `struct` format: byte order and items, with their alignment.
struct Format {
    little: bool,
    items: Vec<(Item, usize)>,
}

fn struct_error(text: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(text)
}

/// Parses a lua_struct format: `<` `>` `=` byte order, `!n` alignment,
/// `x b B h H l L T iN IN f d s cN`, spaces ignored.
fn parse_format(format: &[u8], function: &str) -> mlua::Result<Format> {
    let (mut little, mut align, mut i) = (true, 1usize, 0);
    let mut items = Vec::new();
    let number = |i: &mut usize| -> Option<usize> {
        let start = *i;
        while *i < format.len() && format[*i].is_ascii_digit() {
            *i += 1;
        }
        std::str::from_utf8(&format[start..*i]).ok()?.parse().ok()
    };
    while i < format.len() {
        let option = format[i];
        i += 1;
        let item = match option {
            b' ' => continue,
            b'<' | b'=' => {
                little = true;
                continue;
            }
            b'>' => {
                little = false;
                continue;
            }
            b'!' => {
                align = number(&mut i).unwrap_or(8);
                if !align.is_power_of_two() {
                    return Err(struct_error(format!("alignment {align} is not a power of 2")));
                }
                continue;
            }
            b'x' => Item::Padding,
            b'b' | b'B' => Item::Int {
                size: 1,
                signed: option == b'b',
            },
            b'h' | b'H' => Item::Int {
                size: 2,
                signed: option == b'h',
            },
            b'l' | b'L' | b'T' => Item::Int {
                size: 8,
                signed: option == b'l',
            },
            b'i' | b'I' => {
                let size = number(&mut i).unwrap_or(4);
                if size > 32 {
                    return Err(struct_error(format!("integral size {size} is larger than limit of 32")));
                }
                Item::Int {
                    size,
                    signed: option == b'i',
                }
            }
            b'f' => Item::Float,
            b'd' => Item::Double,
            b's' => Item::ZeroTerminated,
            b'c' => Item::Chars(number(&mut i).unwrap_or(1)),
            other => {
                return Err(bad_argument(
                    1,
                    function,
                    &format!("invalid format option '{}'", other as char),
                ))
            }
        };
        let size = match item {
            Item::Int { size, .. } => size,
            Item::Float => 4,
            Item::Double => 8,
            _ => 1,
        };
        // Items align to their size, capped by `!`; strings never align.
        let alignment = if matches!(item, Item::Int { .. } | Item::Float | Item::Double) {
            size.min(align)
        } else {
            1
        };
        items.push((item, alignment));
    }
    Ok(Format { little, items })
}

/// `offset` moved up to the next multiple of `alignment`.
fn aligned(offset: usize, alignment: usize) -> usize {
    offset.next_multiple_of(alignment.max(1))
}

fn structs(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.raw_set(
        "pack",
        lua.create_function(|lua, (format, values): (LuaString, MultiValue)| {
            let format = parse_format(&format.as_bytes(), "pack")?;
            let mut out = Vec::new();
            let mut values = values.into_iter();
            // The argument number of the value `next` gave last.
            let mut argument = 1;
            let mut next = || {
                argument += 1;
                (argument, values.next().unwrap_or(Value::Nil))
            };
            for (item, alignment) in &format.items {
                out.resize(aligned(out.len(), *alignment), 0);
                match item {
                    Item::Padding => out.push(0),
                    Item::Int { size, .. } => {
                        let (argument, value) = next();
                        let n = number_arg(lua, argument, value)?;
                        let value = if n < 0.0 { n as i64 as u64 } else { n as u64 };
                        // Bytes past the eighth are zero, as lua_struct writes them.
                        let bytes: Vec<u8> = (0..*size)
                            .map(|k| if k < 8 { (value >> (8 * k)) as u8 } else { 0 })
                            .collect();
                        if format.little {
                            out.extend(bytes);
                        } else {
                            out.extend(bytes.into_iter().rev());
                        }
                    }
                    Item::Float | Item::Double => {
                        let (argument, value) = next();
                        let n = number_arg(lua, argument, value)?;
                        let mut bytes = if matches!(item, Item::Float) {
                            (n as f32).to_le_bytes().to_vec()
                        } else {
                            n.to_le_bytes().to_vec()
                        };
                        if !format.little {
                            bytes.reverse();
                        }
                        out.extend(bytes);
                    }
                    Item::ZeroTerminated | Item::Chars(_) => {
                        let (argument, value) = next();
                        let kind = lua_type(&value);
                        let text = lua
                            .coerce_string(value)?
                            .ok_or_else(|| bad_argument(argument, "pack", &format!("string expected, got {kind}")))?;
                        let bytes = text.as_bytes();
                        match item {
                            Item::ZeroTerminated => {
                                out.extend_from_slice(&bytes);
                                out.push(0);
                            }
                            Item::Chars(0) => out.extend_from_slice(&bytes),
                            Item::Chars(size) => {
                                if bytes.len() < *size {
                                    return Err(bad_argument(argument + 1, "pack", "string too short"));
                                }
                                out.extend_from_slice(&bytes[..*size]);
                            }
                            _ => unreachable!("matched above"),
                        }
                    }
                }
            }
            lua.create_string(out)
        })?,
    )?;
    table.raw_set(
        "unpack",
        lua.create_function(|lua, (format, data, start): (LuaString, LuaString, Option<f64>)| {
            let format = parse_format(&format.as_bytes(), "unpack")?;
            let data = data.as_bytes();
            let mut pos = start.map_or(0, |p| (p as usize).saturating_sub(1));
            let mut values: Vec<Value> = Vec::new();
            let take = |pos: &mut usize, size: usize| -> mlua::Result<&[u8]> {
                let bytes = data
                    .get(*pos..*pos + size)
                    .ok_or_else(|| bad_argument(2, "unpack", "data string too short"))?;
                *pos += size;
                Ok(bytes)
            };
            for (item, alignment) in &format.items {
                pos = aligned(pos, *alignment);
                match item {
                    Item::Padding => pos += 1,
                    Item::Int { size, signed } => {
                        let mut bytes = take(&mut pos, *size)?.to_vec();
                        if !format.little {
                            bytes.reverse();
                        }
                        let mut value = bytes.iter().take(8).rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
                        let n = if *signed && *size < 8 {
                            let shift = 64 - 8 * *size as u32;
                            value <<= shift;
                            ((value as i64) >> shift) as f64
                        } else if *signed {
                            value as i64 as f64
                        } else {
                            value as f64
                        };
                        values.push(Value::Number(n));
                    }
                    Item::Float | Item::Double => {
                        let size = if matches!(item, Item::Float) { 4 } else { 8 };
                        let mut bytes = take(&mut pos, size)?.to_vec();
                        if !format.little {
                            bytes.reverse();
                        }
                        let n = if size == 4 {
                            f64::from(f32::from_le_bytes(bytes.try_into().expect("4 bytes")))
                        } else {
                            f64::from_le_bytes(bytes.try_into().expect("8 bytes"))
                        };
                        values.push(Value::Number(n));
                    }
                    Item::ZeroTerminated => {
                        let rest = data.get(pos..).unwrap_or_default();
                        let end = rest
                            .iter()
                            .position(|&b| b == 0)
                            .ok_or_else(|| struct_error("unfinished string in data"))?;
                        values.push(Value::String(lua.create_string(&rest[..end])?));
                        pos += end + 1;
                    }
                    Item::Chars(size) => {
                        // `c0` takes its size from the value before, which it replaces.
                        let size = match (size, values.last()) {
                            (0, Some(Value::Number(n))) => {
                                let n = *n as usize;
                                values.pop();
                                n
                            }
                            (0, _) => return Err(struct_error("format 'c0' needs a previous size")),
                            (size, _) => *size,
                        };
                        let bytes = take(&mut pos, size)?;
                        values.push(Value::String(lua.create_string(bytes)?));
                    }
                }
            }
            values.push(Value::Number((pos + 1) as f64));
            Ok(MultiValue::from_vec(values))
        })?,
    )?;
    table.raw_set(
        "size",
        lua.create_function(|_, format: LuaString| {
            let format = parse_format(&format.as_bytes(), "size")?;
            let mut size = 0usize;
            for (item, alignment) in &format.items {
                size = aligned(size, *alignment);
                size += match item {
                    Item::Int { size, .. } => *size,
                    Item::Float => 4,
                    Item::Double => 8,
                    Item::Padding => 1,
                    Item::Chars(n) if *n > 0 => *n,
                    Item::Chars(_) => return Err(bad_argument(1, "size", "option 'c0' has no fixed size")),
                    Item::ZeroTerminated => return Err(bad_argument(1, "size", "option 's' has no fixed size")),
                };
            }
            Ok(size as f64)
        })?,
    )?;
    Ok(table)
}

/// A number argument as `luaL_checknumber` takes it (numeric strings too).
fn number_arg(lua: &Lua, argument: usize, value: Value) -> mlua::Result<f64> {
    let kind = lua_type(&value);
    lua.coerce_number(value)?
        .ok_or_else(|| bad_argument(argument, "pack", &format!("number expected, got {kind}")))
}

/// Lua's `luaL_argerror` text.
fn bad_argument(argument: usize, function: &str, text: &str) -> mlua::Error {
    struct_error(format!("bad argument #{argument} to '{function}' ({text})"))
}

/// Lua 5.1's name of a value's type.
fn lua_type(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) | Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Table(_) => "table",
        Value::Function(_) => "function",
        Value::Thread(_) => "thread",
        _ => "userdata",
    }
}
