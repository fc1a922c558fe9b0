"""Provider retries recognised by delivery id: the id window, its segments and its changelog."""
