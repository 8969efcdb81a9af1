"""A local stack for trying the worker and for the tests: a private `redis-server` and an SMTP
sink that stores what it receives. Not used by the worker itself; needs the `local` extra."""
