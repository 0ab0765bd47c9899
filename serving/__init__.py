"""The online runtime behind ``service.py``: scorer, API models, HTTP guard, telemetry, online
features and their state backends, hot swap, BentoML fixes. Offline code never imports it."""
