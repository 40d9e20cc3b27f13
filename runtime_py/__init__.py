"""Reference runtime: runs a method list (eager model or exported bundle) exactly as the phone apps do."""
