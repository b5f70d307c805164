"""What each kind of source asks for and what it finds: pure functions of params and responses."""
