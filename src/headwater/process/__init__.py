"""Process: the stages every event passes between the log and the destinations."""
