"""Root conftest: the shared real-Redis / real-RabbitMQ fixtures."""

pytest_plugins = ["lingua_shared.testing"]
