//! redraft-proxy
