//! redraft-loadtest
