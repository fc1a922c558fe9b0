"""The subscriber's contract as data: headers, topic names, JSON Schema, AsyncAPI, compatibility."""
