-- pyops demo: a small web app's SQLite database (built fresh by scripts/demo.sh).
PRAGMA journal_mode = WAL;
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, name TEXT NOT NULL,
                    created_at TEXT NOT NULL DEFAULT (datetime('now')));
CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
                    title TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE "Comments With Spaces" (id INTEGER PRIMARY KEY, post_id INTEGER REFERENCES posts(id),
                    body TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
INSERT INTO users (email, name) SELECT 'user' || i || '@example.org', 'User ' || i FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
INSERT INTO posts (user_id, title, body)
SELECT 1 + (i % 200), 'Post ' || i, 'Lorem ipsum dolor sit amet, ' || hex(randomblob(64)) FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO "Comments With Spaces" (post_id, body) SELECT 1 + (i % 1000), 'Nice post ' || i FROM n;
INSERT INTO users (email, name) VALUES ('zoë@example.org', 'Zoë Ünicode');
