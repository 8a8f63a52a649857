//! redraft-placement
