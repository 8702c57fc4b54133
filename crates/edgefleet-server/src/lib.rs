//! edgefleet-server
