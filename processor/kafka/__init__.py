"""processor's side of Kafka: the clients it makes and what it needs of aiokafka."""
