"""The analysts' review queue: a server-rendered web app (``fraudops review``, port 8082) over
the decision store and the fraud API."""
