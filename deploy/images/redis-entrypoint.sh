#!/bin/sh
# As the official image: `redis-server ...` listens for other containers (protected mode off).
if [ "$1" = redis-server ]; then
  set -- "$@" --protected-mode no
fi
exec "$@"
