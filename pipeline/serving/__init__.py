"""``happysad serve-model``'s parts: the served model and its hot swap (``models``), the batcher
that groups small requests into one model call (``batching``), what a request may hold
(``requests``), the Prometheus figures (``metrics``) and the HTTP routes (``app``)."""
