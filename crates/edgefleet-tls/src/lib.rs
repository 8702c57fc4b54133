//! edgefleet-tls
