"""HTTP endpoints; each module owns one route family."""
