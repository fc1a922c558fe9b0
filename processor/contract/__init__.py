"""The subscriber's contract as documents: JSON Schema, AsyncAPI, and which changes break
it. Made from its parts, which everything else uses too: `processor.events` (the
models), `processor.headers` (the headers), `processor.naming` (topic names)."""
