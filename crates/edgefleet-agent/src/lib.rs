//! edgefleet-agent
