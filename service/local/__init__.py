"""A local stack for trying the worker and for the tests: a private `redis-server` and an SMTP
sink that stores what it receives (`python -m service.local`, which `make run` runs). Not used by
the worker itself. The sink needs the `local` extra; `stack_file` needs only the standard
library, as the settings of every CLI read it."""
