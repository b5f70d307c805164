"""params.yaml as typed sections: one schema module per section, and the loader that reads them."""
