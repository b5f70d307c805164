"""The bundled demo image-search site: a face generator, the site builder, a loopback server."""
