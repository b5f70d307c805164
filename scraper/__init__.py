"""The Scrapy project that fills data/raw, and the bundled demo site it crawls by default."""
