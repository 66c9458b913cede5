"""Primary-side machinery: verification of the primary's own records, event log pruning."""
