"""The files stages hand each other, each with its one reader and writer, and the names they share."""
