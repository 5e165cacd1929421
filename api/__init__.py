"""The Falcon API: a thin HTTP edge over domain services."""
