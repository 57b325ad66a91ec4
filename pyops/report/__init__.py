"""`pyops db report`: PostgreSQL insight, one section per question an operator asks
(what is slow, what is unused, what is about to break), each finding with the SQL
that addresses it. Read-only: the report never changes the database."""
