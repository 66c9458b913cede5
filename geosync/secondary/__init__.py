"""Secondary-side machinery: log cursor, event handlers, scheduler, transfers, sweeps."""
