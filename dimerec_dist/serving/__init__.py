"""Serving: a finished run exported as a bundle (export.py, bundle.py, tower.py,
index_tuning.py), served over HTTP by one process (server.py, batcher.py) or by a sharded
Ray Serve service (service.py, proxy_guard.py, starting_listener.py), both speaking one
wire protocol (protocol.py) and ranking with one recommender (recommender.py, exact_search.py);
dimerec-serve is serve_cli.py."""
