#!/usr/bin/env bash
# Make sure Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672) answer: start them when
# installed but not running; say how to install them when missing. Exit non-zero if not up.
set -u
REDIS_PORT=${LINGUA_REDIS_PORT:-6379}
AMQP_PORT=${LINGUA_AMQP_PORT:-5672}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do port_open "$1" && return 0; sleep 0.1; done; return 1
}

ok=0
if port_open "$REDIS_PORT"; then
  echo "redis:    answering on 127.0.0.1:$REDIS_PORT"
elif command -v redis-server >/dev/null 2>&1; then
  echo "redis:    not running; starting redis-server on 127.0.0.1:$REDIS_PORT"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  dir=/var/lib/redis; [ -w "$dir" ] || dir=$(mktemp -d)
  logf=/var/log/redis/ci.log; [ -w /var/log/redis ] || logf="$dir/redis.log"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir "$dir" --logfile "$logf" >/dev/null
  wait_port "$REDIS_PORT" 15 || { echo "redis:    did not come up; see $logf" >&2; ok=1; }
else
  echo "redis:    MISSING. Install it: sudo apt-get install -y redis-server  (Redis >= 7)" >&2
  ok=1
fi

if port_open "$AMQP_PORT"; then
  echo "rabbitmq: answering on 127.0.0.1:$AMQP_PORT"
elif command -v rabbitmq-server >/dev/null 2>&1; then
  echo "rabbitmq: not running; starting rabbitmq-server -detached (takes a few seconds)"
  rabbitmq-server -detached >/dev/null 2>&1
  if wait_port "$AMQP_PORT" 90; then
    command -v rabbitmq-diagnostics >/dev/null 2>&1 && rabbitmq-diagnostics -q check_running >/dev/null 2>&1 || true
  else
    echo "rabbitmq: did not come up within 90 s; see /var/log/rabbitmq/" >&2; ok=1
  fi
else
  echo "rabbitmq: MISSING. Install it: sudo apt-get install -y rabbitmq-server  (RabbitMQ >= 3.10)" >&2
  ok=1
fi
exit $ok
