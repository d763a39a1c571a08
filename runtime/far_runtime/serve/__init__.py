"""``far-runtime serve``: a bundle behind Ray Serve's HTTP proxy, with batching that keeps images exact.

``requests`` (parse and check one request), ``batching`` (group, stack randomness, run),
``deployment`` (the Ray Serve replica), ``server`` (start and stop), ``client`` (stdlib
client), ``loadtest``. Only ``deployment`` and ``server`` import Ray; install far-runtime[serve].
"""
