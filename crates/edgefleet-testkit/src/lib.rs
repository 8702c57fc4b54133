//! edgefleet-testkit
