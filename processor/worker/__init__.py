"""The routing process: consume the raw topic, route, and commit per guarantee."""
