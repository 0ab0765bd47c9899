"""From the registry to traffic: the Bento store, the release (build, containerize, roll out) and
its roll-out targets."""
