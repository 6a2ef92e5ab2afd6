--
-- PostgreSQL database dump
--

\restrict fNRCBdjF9DDP2dwa6dbnQeDMqZLCeGTjwp0V8EJvDOUFwpDouIYhg4y29EJbvhV

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: legacyv1; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA legacyv1;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: onethread_history; Type: TABLE; Schema: legacyv1; Owner: -
--

CREATE TABLE legacyv1.onethread_history (
    id bigint NOT NULL,
    key text NOT NULL,
    role text NOT NULL,
    content text NOT NULL,
    ts double precision NOT NULL,
    platform text DEFAULT ''::text NOT NULL,
    chat_id text DEFAULT ''::text NOT NULL,
    user_id text DEFAULT ''::text NOT NULL,
    user_name text DEFAULT ''::text NOT NULL,
    message_id text DEFAULT ''::text NOT NULL,
    mirror boolean DEFAULT false NOT NULL,
    source text DEFAULT ''::text NOT NULL,
    metadata json DEFAULT '{}'::json NOT NULL
);


--
-- Name: onethread_history_id_seq; Type: SEQUENCE; Schema: legacyv1; Owner: -
--

CREATE SEQUENCE legacyv1.onethread_history_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: onethread_history_id_seq; Type: SEQUENCE OWNED BY; Schema: legacyv1; Owner: -
--

ALTER SEQUENCE legacyv1.onethread_history_id_seq OWNED BY legacyv1.onethread_history.id;


--
-- Name: onethread_schema_version; Type: TABLE; Schema: legacyv1; Owner: -
--

CREATE TABLE legacyv1.onethread_schema_version (
    component text NOT NULL,
    version integer NOT NULL
);


--
-- Name: onethread_history id; Type: DEFAULT; Schema: legacyv1; Owner: -
--

ALTER TABLE ONLY legacyv1.onethread_history ALTER COLUMN id SET DEFAULT nextval('legacyv1.onethread_history_id_seq'::regclass);


--
-- Data for Name: onethread_history; Type: TABLE DATA; Schema: legacyv1; Owner: -
--

COPY legacyv1.onethread_history (id, key, role, content, ts, platform, chat_id, user_id, user_name, message_id, mirror, source, metadata) FROM stdin;
1	user:alice	user	hello from telegram	1700000000	telegram	42	42	Alice	m1	f		{}
2	user:alice	assistant	Hi Alice! ünïcødé ✓	1700000001	telegram	42				f		{}
3	user:alice	assistant	Stand-up in 5 minutes	1700000100	discord					t	cron	{"job": "standup", "n": 3}
4	bot_web_xyz	user	hello from telegram	1700000000	telegram	42	42	Alice	m1	f		{}
\.


--
-- Data for Name: onethread_schema_version; Type: TABLE DATA; Schema: legacyv1; Owner: -
--

COPY legacyv1.onethread_schema_version (component, version) FROM stdin;
history	1
\.


--
-- Name: onethread_history_id_seq; Type: SEQUENCE SET; Schema: legacyv1; Owner: -
--

SELECT pg_catalog.setval('legacyv1.onethread_history_id_seq', 4, true);


--
-- Name: onethread_history onethread_history_pkey; Type: CONSTRAINT; Schema: legacyv1; Owner: -
--

ALTER TABLE ONLY legacyv1.onethread_history
    ADD CONSTRAINT onethread_history_pkey PRIMARY KEY (id);


--
-- Name: onethread_schema_version onethread_schema_version_pkey; Type: CONSTRAINT; Schema: legacyv1; Owner: -
--

ALTER TABLE ONLY legacyv1.onethread_schema_version
    ADD CONSTRAINT onethread_schema_version_pkey PRIMARY KEY (component);


--
-- Name: onethread_history_key_ts; Type: INDEX; Schema: legacyv1; Owner: -
--

CREATE INDEX onethread_history_key_ts ON legacyv1.onethread_history USING btree (key, ts, id);


--
-- PostgreSQL database dump complete
--

\unrestrict fNRCBdjF9DDP2dwa6dbnQeDMqZLCeGTjwp0V8EJvDOUFwpDouIYhg4y29EJbvhV

