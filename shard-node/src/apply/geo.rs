//! GEO: GEOADD, GEOPOS, GEODIST, GEOHASH, GEOSEARCH and GEOSEARCHSTORE over
//! sorted sets, as Redis 7.0 keeps them: a member's score is the 52-bit
//! geohash of its position (26 bits of longitude over -180..180 interleaved
//! with 26 of latitude over -85.05112878..85.05112878), so a GEO set is an
//! ordinary sorted set (ZRANGE, ZREM and DUMP work on it) and the same
//! positions give the same scores, coordinates and distances as redis-server
//! (the haversine formula on Redis's earth radius).
//!
//! A search covers its circle or box with at most four geohash cells, scans
//! each cell's score range in the by-score order and keeps the points inside
//! the shape: the cost is the points in those cells, as in Redis. The points
//! found are Redis's; without ASC, DESC or COUNT their order is the scan's,
//! which may differ from Redis's, and COUNT n ANY returns n matching points
//! that may not be the n Redis would return.

use redraft_common::ops::Bytes;
use redraft_common::resp::Frame;

use super::collections::{double, error, int, Collection, Reply, SYNTAX};
use super::zset::{ordered, BY_SCORE};
use super::Keyspace;
use crate::storage::Kind;

const LON_MIN: f64 = -180.0;
const LON_MAX: f64 = 180.0;
const LAT_MIN: f64 = -85.051_128_78;
const LAT_MAX: f64 = 85.051_128_78;
/// Bits per coordinate in a score.
const STEP: u32 = 26;
const EARTH_RADIUS_M: f64 = 6_372_797.560_856;
const NOT_A_FLOAT: &str = "ERR value is not a valid float";

/// Interleaves two coordinates' cells: latitude bits at even positions,
/// longitude bits at odd ones.
fn interleave(lat: u32, lon: u32) -> u64 {
    (0..32).fold(0u64, |bits, i| {
        bits | (u64::from((lat >> i) & 1) << (2 * i)) | (u64::from((lon >> i) & 1) << (2 * i + 1))
    })
}

fn deinterleave(bits: u64) -> (u32, u32) {
    (0..32).fold((0u32, 0u32), |(lat, lon), i| {
        (
            lat | (((bits >> (2 * i)) & 1) as u32) << i,
            lon | (((bits >> (2 * i + 1)) & 1) as u32) << i,
        )
    })
}

/// The cell of a coordinate at `step` bits over `min..max`.
fn cell(value: f64, min: f64, max: f64, step: u32) -> u32 {
    (((value - min) / (max - min)) * (1u64 << step) as f64) as u32
}

/// The geohash of a position over the given latitude range.
fn encode(lon: f64, lat: f64, lat_min: f64, lat_max: f64) -> u64 {
    interleave(cell(lat, lat_min, lat_max, STEP), cell(lon, LON_MIN, LON_MAX, STEP))
}

/// A member's score for a position.
fn score_of(lon: f64, lat: f64) -> f64 {
    encode(lon, lat, LAT_MIN, LAT_MAX) as f64
}

/// The position a score stands for: the centre of its cell.
fn decode(score: f64) -> (f64, f64) {
    let (lat_cell, lon_cell) = deinterleave(score as u64);
    let cells = (1u64 << STEP) as f64;
    let middle = |index: u32, min: f64, max: f64| {
        let scale = max - min;
        let low = min + (f64::from(index) / cells) * scale;
        let high = min + ((f64::from(index) + 1.0) / cells) * scale;
        ((low + high) / 2.0).clamp(min, max)
    };
    (middle(lon_cell, LON_MIN, LON_MAX), middle(lat_cell, LAT_MIN, LAT_MAX))
}

fn radians(degrees: f64) -> f64 {
    degrees * (std::f64::consts::PI / 180.0)
}

fn lat_distance(lat1: f64, lat2: f64) -> f64 {
    EARTH_RADIUS_M * (radians(lat2) - radians(lat1)).abs()
}

/// Great-circle distance in meters (haversine).
fn distance(lon1: f64, lat1: f64, lon2: f64, lat2: f64) -> f64 {
    let v = ((radians(lon2) - radians(lon1)) / 2.0).sin();
    if v == 0.0 {
        return lat_distance(lat1, lat2);
    }
    let u = ((radians(lat2) - radians(lat1)) / 2.0).sin();
    let a = u * u + radians(lat1).cos() * radians(lat2).cos() * v * v;
    2.0 * EARTH_RADIUS_M * a.sqrt().asin()
}

/// The standard 11-character geohash of a score's position.
fn geohash(score: f64) -> String {
    const ALPHABET: &[u8] = b"0123456789bcdefghjkmnpqrstuvwxyz";
    let (lon, lat) = decode(score);
    let bits = encode(lon, lat, -90.0, 90.0);
    (0..11)
        .map(|i| {
            let index = if i == 10 {
                0
            } else {
                (bits >> (52 - (i + 1) * 5)) & 0x1f
            };
            ALPHABET[index as usize] as char
        })
        .collect()
}

/// A coordinate as Redis replies with it (`%.17Lf`, trailing zeros dropped).
fn human(value: f64) -> Frame {
    let text = format!("{value:.17}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    Frame::Double(if text == "-0" { "0".into() } else { text.into() })
}

/// A distance as Redis replies with it (`%.4f`).
fn distance_reply(meters: f64) -> Frame {
    Frame::Bulk(format!("{meters:.4}").into_bytes())
}

/// Meters per unit.
fn unit(arg: &[u8]) -> Reply<f64> {
    match arg.to_ascii_lowercase().as_slice() {
        b"m" => Ok(1.0),
        b"km" => Ok(1000.0),
        b"ft" => Ok(0.3048),
        b"mi" => Ok(1609.34),
        _ => Err(error("ERR unsupported unit provided. please use M, KM, FT, MI")),
    }
}

fn float(arg: &[u8], message: &str) -> Reply<f64> {
    double(arg).ok_or_else(|| error(message))
}

/// A `longitude latitude` pair within Redis's limits.
fn lon_lat(args: &[Bytes]) -> Reply<(f64, f64)> {
    let (lon, lat) = (float(&args[0], NOT_A_FLOAT)?, float(&args[1], NOT_A_FLOAT)?);
    if !(LON_MIN..=LON_MAX).contains(&lon) || !(LAT_MIN..=LAT_MAX).contains(&lat) {
        return Err(error(&format!("ERR invalid longitude,latitude pair {lon:.6},{lat:.6}")));
    }
    Ok((lon, lat))
}

/// The area a search keeps: a circle or an axis-aligned box (meters).
#[derive(Clone, Copy)]
enum Shape {
    Radius(f64),
    Box { width: f64, height: f64 },
}

/// A search: centre, shape and the unit of its distances.
struct Search {
    lon: f64,
    lat: f64,
    shape: Shape,
    unit: f64,
}

impl Search {
    /// The distance from the centre when the point is inside the shape.
    fn contains(&self, lon: f64, lat: f64) -> Option<f64> {
        match self.shape {
            Shape::Radius(radius) => {
                let d = distance(self.lon, self.lat, lon, lat);
                (d <= radius * self.unit).then_some(d)
            }
            Shape::Box { width, height } => {
                if lat_distance(lat, self.lat) > height * self.unit / 2.0
                    || distance(lon, lat, self.lon, lat) > width * self.unit / 2.0
                {
                    return None;
                }
                Some(distance(self.lon, self.lat, lon, lat))
            }
        }
    }

    /// Score ranges `[low, high)` whose cells together cover the shape.
    fn cells(&self) -> Vec<(u64, u64)> {
        let (half_width, half_height) = match self.shape {
            Shape::Radius(r) => (r * self.unit, r * self.unit),
            Shape::Box { width, height } => (width * self.unit / 2.0, height * self.unit / 2.0),
        };
        // The bounding box in degrees, widened a little: points are checked
        // exactly afterwards, so a wider box only costs a few more reads.
        let lat_delta = (half_height / EARTH_RADIUS_M).to_degrees() * 1.01 + 1e-9;
        let (lat_low, lat_high) = ((self.lat - lat_delta).max(LAT_MIN), (self.lat + lat_delta).min(LAT_MAX));
        let widest = radians(lat_low.abs().max(lat_high.abs())).cos();
        let lon_delta = if widest <= 1e-12 {
            360.0
        } else {
            (half_width / EARTH_RADIUS_M / widest).to_degrees() * 1.01 + 1e-9
        };
        let lat_span = lat_high - lat_low;
        let lon_span = (2.0 * lon_delta).min(360.0);
        // The finest step whose cells are at least as large as the box, so
        // that the box touches at most two cells each way.
        let step = (0..=STEP)
            .rev()
            .find(|&s| {
                let cells = (1u64 << s) as f64;
                (LAT_MAX - LAT_MIN) / cells >= lat_span && 360.0 / cells >= lon_span
            })
            .unwrap_or(0);
        if step == 0 || lon_span >= 360.0 {
            return vec![(0, 1 << (2 * STEP))];
        }
        let cells = 1i64 << step;
        let lat_cells =
            cell(lat_low, LAT_MIN, LAT_MAX, step)..=cell(lat_high, LAT_MIN, LAT_MAX, step).min(cells as u32 - 1);
        let lon_cell = |lon: f64| ((lon - LON_MIN) / 360.0 * cells as f64).floor() as i64;
        let (lon_first, lon_last) = (lon_cell(self.lon - lon_delta), lon_cell(self.lon + lon_delta));
        let shift = 2 * (STEP - step);
        let mut ranges: Vec<(u64, u64)> = lat_cells
            .flat_map(|lat| {
                (lon_first..=lon_last).map(move |lon| {
                    let hash = interleave(lat, lon.rem_euclid(cells) as u32);
                    (hash << shift, (hash + 1) << shift)
                })
            })
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        ranges
    }
}

/// A point a search found.
struct Found {
    member: Vec<u8>,
    meters: f64,
    score: f64,
    lon: f64,
    lat: f64,
}

/// GEOSEARCH's options after the source key.
struct SearchRequest {
    from: Option<From>,
    shape: Option<(Shape, f64)>,
    order: Option<bool>,
    count: Option<(u64, bool)>,
    with_dist: bool,
    with_hash: bool,
    with_coord: bool,
    store_dist: bool,
}

enum From {
    Member(Option<(f64, f64)>),
    Position(f64, f64),
}

impl Keyspace<'_> {
    /// GEO commands; `None` for a name that is not one.
    pub(super) fn geo_command(&mut self, name: &str, a: &[Bytes]) -> Option<Frame> {
        let reply = match name {
            "geoadd" => self.geoadd(a),
            "geopos" => self.geo_members(a, |score| {
                let (lon, lat) = decode(score);
                Frame::Array(vec![human(lon), human(lat)])
            }),
            "geohash" => self.geo_members(a, |score| Frame::Bulk(geohash(score).into_bytes())),
            "geodist" => self.geodist(a),
            "geosearch" => self.geosearch(a, false),
            "geosearchstore" => self.geosearch(a, true),
            _ => return None,
        };
        Some(reply.unwrap_or_else(|e| e))
    }

    fn geoadd(&mut self, a: &[Bytes]) -> Reply<Frame> {
        let mut first = 2;
        let (mut nx, mut xx) = (false, false);
        while first < a.len() {
            match a[first].to_ascii_lowercase().as_slice() {
                b"nx" => nx = true,
                b"xx" => xx = true,
                b"ch" => {}
                _ => break,
            }
            first += 1;
        }
        if !(a.len() - first).is_multiple_of(3) || (nx && xx) {
            return Err(error(SYNTAX));
        }
        let mut zadd: Vec<Bytes> = a[2..first].to_vec();
        for triple in a[first..].chunks(3) {
            let (lon, lat) = lon_lat(triple)?;
            zadd.push((score_of(lon, lat) as u64).to_string().into_bytes());
            zadd.push(triple[2].clone());
        }
        self.zadd(&self.owned_key(&a[1]), &zadd, false)
    }

    /// GEOPOS and GEOHASH: `render` of each member's score, nil for a
    /// member that is not there.
    fn geo_members(&self, a: &[Bytes], render: impl Fn(f64) -> Frame) -> Reply<Frame> {
        let skey = self.owned_key(&a[1]);
        let exists = self.zset(&skey)?.is_some();
        let missing = if a[0].eq_ignore_ascii_case(b"geopos") {
            Frame::NullArray
        } else {
            Frame::Null
        };
        Ok(Frame::Array(
            a[2..]
                .iter()
                .map(|member| match exists.then(|| self.score(&skey, member)).flatten() {
                    Some(score) => render(score),
                    None => missing.clone(),
                })
                .collect(),
        ))
    }

    fn geodist(&self, a: &[Bytes]) -> Reply<Frame> {
        let per_unit = match a.len() {
            4 => 1.0,
            5 => unit(&a[4])?,
            _ => return Err(error(SYNTAX)),
        };
        let skey = self.owned_key(&a[1]);
        if self.zset(&skey)?.is_none() {
            return Ok(Frame::Null);
        }
        match (self.score(&skey, &a[2]), self.score(&skey, &a[3])) {
            (Some(one), Some(other)) => {
                let ((lon1, lat1), (lon2, lat2)) = (decode(one), decode(other));
                Ok(distance_reply(distance(lon1, lat1, lon2, lat2) / per_unit))
            }
            _ => Ok(Frame::Null),
        }
    }

    /// Parses GEOSEARCH's options (from `a[first]`) as Redis does, in order;
    /// FROMMEMBER's position is looked up as it is parsed.
    fn search_request(
        &self,
        skey: &[u8],
        exists: bool,
        a: &[Bytes],
        first: usize,
        store: bool,
    ) -> Reply<SearchRequest> {
        let mut request = SearchRequest {
            from: None,
            shape: None,
            order: None,
            count: None,
            with_dist: false,
            with_hash: false,
            with_coord: false,
            store_dist: false,
        };
        let mut any = false;
        let mut i = first;
        while i < a.len() {
            let left = a.len() - i - 1;
            match a[i].to_ascii_lowercase().as_slice() {
                b"withdist" => request.with_dist = true,
                b"withhash" => request.with_hash = true,
                b"withcoord" => request.with_coord = true,
                b"any" => any = true,
                b"asc" => request.order = Some(true),
                b"desc" => request.order = Some(false),
                b"count" if left >= 1 => {
                    let count = int(&a[i + 1])?;
                    if count <= 0 {
                        return Err(error("ERR COUNT must be > 0"));
                    }
                    request.count = Some((count as u64, false));
                    i += 1;
                }
                b"storedist" if store => request.store_dist = true,
                b"frommember" if left >= 1 && !matches!(request.from, Some(From::Position(..))) => {
                    let position = if exists {
                        let score = self
                            .score(skey, &a[i + 1])
                            .ok_or_else(|| error("ERR could not decode requested zset member"))?;
                        Some(decode(score))
                    } else {
                        None
                    };
                    request.from = Some(From::Member(position));
                    i += 1;
                }
                b"fromlonlat" if left >= 2 && !matches!(request.from, Some(From::Member(_))) => {
                    let (lon, lat) = lon_lat(&a[i + 1..i + 3])?;
                    request.from = Some(From::Position(lon, lat));
                    i += 2;
                }
                b"byradius" if left >= 2 && !matches!(request.shape, Some((Shape::Box { .. }, _))) => {
                    let radius = float(&a[i + 1], "ERR need numeric radius")?;
                    if radius < 0.0 {
                        return Err(error("ERR radius cannot be negative"));
                    }
                    request.shape = Some((Shape::Radius(radius), unit(&a[i + 2])?));
                    i += 2;
                }
                b"bybox" if left >= 3 && !matches!(request.shape, Some((Shape::Radius(_), _))) => {
                    let width = float(&a[i + 1], "ERR need numeric width")?;
                    let height = float(&a[i + 2], "ERR need numeric height")?;
                    if width < 0.0 || height < 0.0 {
                        return Err(error("ERR height or width cannot be negative"));
                    }
                    request.shape = Some((Shape::Box { width, height }, unit(&a[i + 3])?));
                    i += 3;
                }
                _ => return Err(error(SYNTAX)),
            }
            i += 1;
        }
        let name = String::from_utf8_lossy(&a[0]).into_owned();
        if store && (request.with_dist || request.with_hash || request.with_coord) {
            return Err(error(
                "ERR GEOSEARCHSTORE is not compatible with WITHDIST, WITHHASH and WITHCOORD options",
            ));
        }
        if request.from.is_none() {
            return Err(error(&format!(
                "ERR exactly one of FROMMEMBER or FROMLONLAT can be specified for {name}"
            )));
        }
        if request.shape.is_none() {
            return Err(error(&format!(
                "ERR exactly one of BYRADIUS and BYBOX can be specified for {name}"
            )));
        }
        match (&mut request.count, any) {
            (None, true) => return Err(error("ERR the ANY argument requires COUNT argument")),
            (Some((_, is_any)), true) => *is_any = true,
            // COUNT without ANY returns the nearest points.
            (Some(_), false) if request.order.is_none() => request.order = Some(true),
            _ => {}
        }
        Ok(request)
    }

    /// The points of the sorted set at `skey` inside the search's shape.
    fn points_within(&self, skey: &[u8], search: &Search, enough: Option<u64>) -> Vec<Found> {
        let mut found = Vec::new();
        for (low, high) in search.cells() {
            let mut from = vec![BY_SCORE];
            from.extend_from_slice(&ordered(low as f64));
            for (member, score) in self.in_order(skey, Some(&from), false) {
                if score >= high as f64 {
                    break;
                }
                let (lon, lat) = decode(score);
                if let Some(meters) = search.contains(lon, lat) {
                    found.push(Found {
                        member,
                        meters,
                        score,
                        lon,
                        lat,
                    });
                    if enough.is_some_and(|n| found.len() as u64 >= n) {
                        return found;
                    }
                }
            }
        }
        found
    }

    fn geosearch(&mut self, a: &[Bytes], store: bool) -> Reply<Frame> {
        let source = self.owned_key(&a[if store { 2 } else { 1 }]);
        let exists = self.zset(&source)?.is_some();
        let request = self.search_request(&source, exists, a, if store { 3 } else { 2 }, store)?;
        let (lon, lat) = match request.from {
            Some(From::Position(lon, lat)) | Some(From::Member(Some((lon, lat)))) => (lon, lat),
            _ => (0.0, 0.0),
        };
        let (shape, per_unit) = request.shape.expect("checked by search_request");
        let search = Search {
            lon,
            lat,
            shape,
            unit: per_unit,
        };
        let mut found = if exists {
            let enough = request.count.and_then(|(n, any)| any.then_some(n));
            self.points_within(&source, &search, enough)
        } else {
            Vec::new()
        };
        if let Some(ascending) = request.order {
            found.sort_by(|x, y| x.meters.total_cmp(&y.meters));
            if !ascending {
                found.reverse();
            }
        }
        if let Some((count, _)) = request.count {
            found.truncate(count as usize);
        }
        if store {
            let destination = self.owned_key(&a[1]);
            if self.load(&destination).is_some() {
                self.delete_key(destination.clone());
            }
            if !found.is_empty() {
                let mut zset = Collection::new();
                for point in &found {
                    let score = if request.store_dist {
                        point.meters / per_unit
                    } else {
                        point.score
                    };
                    self.put_entry(&destination, &mut zset, &point.member, None, score);
                }
                self.save_collection(&destination, Kind::ZSet, zset);
            }
            return Ok(Frame::Integer(found.len() as i64));
        }
        let options = usize::from(request.with_dist) + usize::from(request.with_hash) + usize::from(request.with_coord);
        Ok(Frame::Array(
            found
                .into_iter()
                .map(|point| {
                    if options == 0 {
                        return Frame::Bulk(point.member);
                    }
                    let mut item = vec![Frame::Bulk(point.member)];
                    if request.with_dist {
                        item.push(distance_reply(point.meters / per_unit));
                    }
                    if request.with_hash {
                        item.push(Frame::Integer(point.score as i64));
                    }
                    if request.with_coord {
                        item.push(Frame::Array(vec![human(point.lon), human(point.lat)]));
                    }
                    Frame::Array(item)
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_encode_and_decode_like_redis() {
        // redis-server 7.0: GEOADD g 13.361389 38.115556 Palermo, then
        // ZSCORE, GEOPOS and GEOHASH.
        let score = score_of(13.361389, 38.115556);
        assert_eq!(score as u64, 3479099956230698);
        let (lon, lat) = decode(score);
        assert_eq!(human(lon), Frame::Double("13.36138933897018433".into()));
        assert_eq!(human(lat), Frame::Double("38.11555639549629859".into()));
        assert_eq!(geohash(score), "sqc8b49rny0");
        assert_eq!(
            deinterleave(interleave(0x3ff_ffff, 0x155_5555)),
            (0x3ff_ffff, 0x155_5555)
        );
    }

    #[test]
    fn distances_are_haversine_on_redis_earth() {
        let (palermo, catania) = (
            decode(score_of(13.361389, 38.115556)),
            decode(score_of(15.087269, 37.502669)),
        );
        let meters = distance(palermo.0, palermo.1, catania.0, catania.1);
        assert_eq!(format!("{:.4}", meters / 1000.0), "166.2742");
    }

    #[test]
    fn the_cells_cover_the_shape() {
        for (lon, lat, radius) in [
            (15.0, 37.0, 200_000.0),
            (179.9, 0.0, 50_000.0),
            (180.0, 0.0, 50_000.0),
            (0.0, 84.0, 300_000.0),
            (-3.0, -40.0, 5.0),
        ] {
            let search = Search {
                lon,
                lat,
                shape: Shape::Radius(radius),
                unit: 1.0,
            };
            let cells = search.cells();
            assert!(cells.len() <= 4 || cells == vec![(0, 1 << 52)], "{cells:?}");
            // Points on the circle, just inside it, fall in a covered cell.
            for k in 0..64 {
                let angle = f64::from(k) * std::f64::consts::TAU / 64.0;
                let d = radius * 0.999 / EARTH_RADIUS_M;
                let plat = (lat + d.to_degrees() * angle.sin()).clamp(LAT_MIN + 1e-6, LAT_MAX - 1e-6);
                let plon = lon + (d / radians(plat).cos()).to_degrees() * angle.cos();
                let plon = (plon + 180.0).rem_euclid(360.0) - 180.0;
                let score = encode(plon, plat, LAT_MIN, LAT_MAX);
                if search
                    .contains(decode(score as f64).0, decode(score as f64).1)
                    .is_some()
                {
                    assert!(
                        cells.iter().any(|&(low, high)| (low..high).contains(&score)),
                        "{plon},{plat} around {lon},{lat} not covered"
                    );
                }
            }
        }
    }
}
