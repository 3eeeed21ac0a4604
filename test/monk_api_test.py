"""Tests of test/monk_api.py, the local Monk Events API.

The extension's tests trust this server to behave like the API described in shared/seeds/, so these
tests pin that behaviour down: each validation rule of the Events page, the batch endpoint's limits and
all-or-nothing refusal, Bearer auth, idempotency ("latest version wins, one copy counted"), the listing
and usage-cost endpoints, every switchable fault, keep-alive, the control API and start/stop.

The server runs in a subprocess on a free port (--port 0 --port-file); one instance serves all tests
of a class and is reset before each test.  Standard library only.

    cd /work/main && python3 -m unittest test/monk_api_test.py -v
"""

import base64
import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "monk_api.py")
KEY = "test_key"
AUTH = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}


def iso(delta=dt.timedelta(0)):
    return (dt.datetime.now(dt.timezone.utc) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def ev(i=0, **kw):
    e = {"externalCustomerId": "cust_a", "eventName": "api_call", "timestamp": "2026-03-15T10:30:00Z",
         "idempotencyKey": "sync_%d" % i, "properties": {"region": "us-east-1", "tokens": 42}}
    e.update(kw)
    return {k: v for k, v in e.items() if v is not DROP}


DROP = object()   # ev(eventName=DROP) leaves the field out


class ServerProcess:
    """monk_api.py in a subprocess on a free port."""

    def __init__(self, *args):
        self.dir = tempfile.TemporaryDirectory()
        port_file = os.path.join(self.dir.name, "port")
        self.proc = subprocess.Popen([sys.executable, SERVER, "--port", "0", "--port-file", port_file]
                                     + list(args), stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 15
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("monk_api.py did not start")
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())
        self.banner = self.proc.stdout.readline().strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.dir.cleanup()
        return self.proc.returncode


class MonkApiTestCase(unittest.TestCase):
    server_args = ()

    @classmethod
    def setUpClass(cls):
        cls.server = ServerProcess(*cls.server_args)
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def setUp(self):
        self.control("POST", "/_test/reset", {})

    # -- HTTP helpers ---------------------------------------------------------------------------------

    def request(self, method, path, body=None, headers=AUTH, timeout=10, conn=None):
        """One request; returns (status, decoded JSON or None, headers)."""
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            c.request(method, path, data, headers)
            r = c.getresponse()
            raw = r.read()
            self.assertEqual(r.getheader("Content-Length"), str(len(raw)))
            return r.status, (json.loads(raw) if raw else None), r
        finally:
            if conn is None:
                c.close()

    def control(self, method, path, body=None):
        status, doc, _ = self.request(method, path, body, headers={})
        self.assertEqual(status, 200, doc)
        return doc

    def faults(self, **cfg):
        return self.control("POST", "/_test/faults", cfg)

    def post_event(self, e):
        return self.request("POST", "/v1/events", e)

    def post_batch(self, events):
        return self.request("POST", "/v1/events/batch", {"events": events})

    def stored(self):
        return self.control("GET", "/_test/events")["events"]

    def assert_refused(self, e, field, text=None):
        """A single event is refused with a validation error naming field; nothing is stored."""
        before = self.stored()
        status, doc, _ = self.post_event(e)
        self.assertEqual(status, 400, doc)
        self.assertEqual(doc["error"], "validation_error")
        self.assertIn(field, [x["field"] for x in doc["errors"]], doc)
        self.assertTrue(all(x["index"] == 0 for x in doc["errors"]))
        if text:
            self.assertIn(text, json.dumps(doc))
        self.assertEqual(self.stored(), before)

    def assert_accepted(self, e):
        status, doc, _ = self.post_event(e)
        self.assertEqual(status, 202, doc)
        return doc["idempotencyKey"]


class ValidationTest(MonkApiTestCase):
    """The Events page's schema, property and timestamp rules."""

    def test_valid_event_accepted(self):
        self.assertEqual(self.assert_accepted(ev(1)), "sync_1")
        self.assertEqual(self.stored()["sync_1"]["event"], ev(1))

    def test_event_name(self):
        self.assert_refused(ev(eventName=DROP), "eventName")
        self.assert_refused(ev(eventName=""), "eventName")
        self.assert_refused(ev(eventName=42), "eventName")

    def test_customer(self):
        self.assert_refused(ev(externalCustomerId=DROP), "customerId", "externalCustomerId")
        self.assert_refused(ev(externalCustomerId=""), "externalCustomerId")
        self.assert_refused(ev(externalCustomerId=None), "externalCustomerId")
        self.assert_refused(ev(externalCustomerId=DROP, customerId=7), "customerId")
        self.assert_accepted(ev(1, externalCustomerId=DROP, customerId=str(uuid.uuid4())))
        self.assert_accepted(ev(2, customerId=str(uuid.uuid4())))   # both given

    def test_properties(self):
        self.assert_refused(ev(properties={"a": {"b": 1}}), "properties.a", "object")
        self.assert_refused(ev(properties={"a": [1, 2]}), "properties.a", "array")
        self.assert_refused(ev(properties={"a": None}), "properties.a", "null")
        self.assert_refused(ev(properties=[1]), "properties")
        self.assert_refused(ev(properties="x"), "properties")
        self.assert_accepted(ev(1, properties={"s": "x", "i": 1, "f": 1.5, "t": True, "n": False}))
        self.assert_accepted(ev(2, properties={}))
        self.assert_accepted(ev(3, properties=DROP))

    def test_timestamp_format(self):
        for bad in ("yesterday", "2026/03/06 14:30:00", "2026-03-06 14:30:00Z", "2026-13-01T00:00:00Z",
                    "2026-03-06T14:30:00", "1772807400", "", "2026-03-06"):
            with self.subTest(timestamp=bad):
                self.assert_refused(ev(timestamp=bad), "timestamp", "ISO 8601")
        self.assert_refused(ev(timestamp=1772807400), "timestamp")
        for i, good in enumerate(("2026-03-06T14:30:00Z", "2026-03-06T14:30:00.123Z",
                                  "2026-03-06T14:30:00.123456789Z", "2026-03-06T14:30:00+05:30",
                                  "2026-03-06T14:30:00-08:00")):
            with self.subTest(timestamp=good):
                self.assert_accepted(ev(i, timestamp=good))

    def test_timestamp_future_and_past(self):
        self.assert_refused(ev(timestamp=iso(dt.timedelta(hours=2))), "timestamp", "future")
        self.assert_refused(ev(timestamp=iso(dt.timedelta(minutes=61, seconds=30))), "timestamp")
        self.assert_accepted(ev(1, timestamp=iso(dt.timedelta(minutes=30))))
        self.assert_accepted(ev(2, timestamp="2019-01-01T00:00:00Z"))   # backfills are fine
        # an offset counts: 10:00+02:00 two hours from now in UTC terms is refused
        ahead = (dt.datetime.now(dt.timezone(dt.timedelta(hours=-5))) + dt.timedelta(hours=2))
        self.assert_refused(ev(timestamp=ahead.isoformat(timespec="seconds")), "timestamp")

    def test_unknown_and_bad_fields(self):
        self.assert_refused(ev(customer="x"), "customer", "unknown field")
        self.assert_refused(ev(event_name="api_call"), "event_name")
        self.assert_refused(ev(idempotencyKey=""), "idempotencyKey")
        self.assert_refused(ev(idempotencyKey=5), "idempotencyKey")
        status, doc, _ = self.request("POST", "/v1/events", [ev()])
        self.assertEqual(status, 400)
        status, doc, _ = self.request("POST", "/v1/events", b"{not json")
        self.assertEqual((status, doc["error"]), (400, "invalid_json"))
        status, doc, _ = self.request("POST", "/v1/events", b'{"eventName": NaN}')
        self.assertEqual(status, 400)

    def test_generated_key_and_receive_time(self):
        key = self.assert_accepted(ev(idempotencyKey=DROP, timestamp=DROP))
        self.assertEqual(uuid.UUID(key).version, 4)
        rec = self.stored()[key]
        self.assertNotIn("idempotencyKey", rec["event"])     # stored as received
        _, doc, _ = self.request("GET", "/v1/events")
        out = doc["data"][0]
        self.assertEqual(out["idempotencyKey"], key)
        self.assertRegex(out["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

    def test_unknown_customer_when_list_set(self):
        self.assert_accepted(ev(1, externalCustomerId="anyone"))    # no list: anyone goes
        self.faults(customers=["cust_a", "cust_b"])
        self.control("POST", "/_test/reset", {"customers": ["cust_a", "cust_b"]})
        self.assert_refused(ev(2, externalCustomerId="cust_z"), "externalCustomerId", "unknown customer")
        self.assert_refused(ev(2, externalCustomerId=DROP, customerId="cust_z"), "customerId")
        self.assert_accepted(ev(3, externalCustomerId="cust_b"))
        self.faults(customers=None)
        self.assert_accepted(ev(4, externalCustomerId="cust_z"))


class CustomersOptionTest(MonkApiTestCase):
    server_args = ("--customers", "cust_a,cust_b", "--api-key", "other_key")

    def test_customers_and_api_key_options(self):
        headers = dict(AUTH, Authorization="Bearer other_key")
        status, doc, _ = self.request("POST", "/v1/events", ev(1), headers=headers)
        self.assertEqual(status, 202, doc)
        status, doc, _ = self.request("POST", "/v1/events", ev(2, externalCustomerId="nobody"),
                                      headers=headers)
        self.assertEqual(status, 400)
        self.assertIn("unknown customer", doc["errors"][0]["message"])
        self.assertEqual(self.request("POST", "/v1/events", ev(3))[0], 401)   # default key not valid
        # reset keeps the command line's customer list and the key
        self.control("POST", "/_test/reset", {})
        self.assertEqual(self.request("POST", "/v1/events", ev(2, externalCustomerId="nobody"),
                                      headers=headers)[0], 400)


class BatchTest(MonkApiTestCase):

    def test_batch_accepted(self):
        status, doc, _ = self.post_batch([ev(i) for i in range(100)])
        self.assertEqual((status, doc), (202, {"accepted": 100}))
        self.assertEqual(len(self.stored()), 100)
        stats = self.control("GET", "/_test/stats")
        self.assertEqual((stats["batches"], stats["max_batch"], stats["events_stored"]), (1, 100, 100))

    def test_one_bad_event_refuses_whole_batch(self):
        events = [ev(i) for i in range(50)]
        events[7]["eventName"] = ""
        events[31]["properties"] = {"nested": {"x": 1}}
        events[44]["bogus"] = 1
        status, doc, _ = self.post_batch(events)
        self.assertEqual(status, 400, doc)
        self.assertEqual(doc["error"], "validation_error")
        self.assertEqual([(e["index"], e["field"]) for e in doc["errors"]],
                         [(7, "eventName"), (31, "properties.nested"), (44, "bogus")])
        self.assertTrue(all(e["message"] for e in doc["errors"]))
        self.assertEqual(self.stored(), {})
        self.assertEqual(self.control("GET", "/_test/stats")["events_received"], 0)

    def test_limits(self):
        status, doc, _ = self.post_batch([ev(i) for i in range(10001)])
        self.assertEqual(status, 413, doc)
        self.assertIn("10000", doc["message"])
        self.assertEqual(self.post_batch([])[0], 400)
        self.assertEqual(self.request("POST", "/v1/events/batch", {"event": [ev()]})[0], 400)
        self.assertEqual(self.request("POST", "/v1/events/batch", [ev()])[0], 400)
        self.assertEqual(self.request("POST", "/v1/events/batch", {"events": {}})[0], 400)
        self.assertEqual(self.stored(), {})
        status, doc, _ = self.post_batch([ev(i) for i in range(10000)])
        self.assertEqual((status, doc), (202, {"accepted": 10000}))

    def test_versions_history_and_repeated_keys(self):
        self.post_batch([ev(1, properties={"v": 1})])
        self.post_batch([ev(1, properties={"v": 2}), ev(2)])
        self.assertEqual(self.control("GET", "/_test/stats")["batches_with_repeated_keys"], 0)
        self.post_batch([ev(3, properties={"v": 1}), ev(3, properties={"v": 2})])
        self.assertEqual(self.control("GET", "/_test/stats")["batches_with_repeated_keys"], 1)
        events = self.control("GET", "/_test/events?history=1")["events"]
        key1 = ev(1)["idempotencyKey"]
        self.assertEqual([e["properties"]["v"] for e in events[key1]["history"]], [1, 2])
        self.assertEqual(events[key1]["event"]["properties"]["v"], 2)
        self.assertNotIn("history", self.control("GET", "/_test/events")["events"][key1])

    def test_10000_varied_events_stored(self):
        # the speed of the server is measured by the benchmarks, not asserted here
        events = [ev(i, timestamp="2026-03-15T10:%02d:%02d.%06dZ" % (i // 60 % 60, i % 60, i),
                     externalCustomerId="cust_%d" % (i % 37)) for i in range(10000)]
        body = json.dumps({"events": events}).encode()
        status, doc, _ = self.request("POST", "/v1/events/batch", body)
        self.assertEqual((status, doc), (202, {"accepted": 10000}))
        stored = self.stored()
        self.assertEqual(len(stored), 10000)
        self.assertEqual(len({e["event"]["externalCustomerId"] for e in stored.values()}), 37)

    def test_gzip_and_chunked_bodies(self):
        import gzip
        body = gzip.compress(json.dumps({"events": [ev(1)]}).encode())
        status, _, _ = self.request("POST", "/v1/events/batch", body,
                                    headers=dict(AUTH, **{"Content-Encoding": "gzip"}))
        self.assertEqual(status, 202)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("POST", "/v1/events/batch", iter([b'{"events":[', json.dumps(ev(2)).encode(), b"]}"]),
                  AUTH, encode_chunked=True)
        self.assertEqual(c.getresponse().status, 202)
        c.close()
        self.assertEqual(sorted(self.stored()), ["sync_1", "sync_2"])


class AuthTest(MonkApiTestCase):

    def test_auth(self):
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY},
                        {"Authorization": "Basic " + KEY}):
            with self.subTest(headers=headers):
                status, doc, _ = self.request("POST", "/v1/events", ev(), headers=headers)
                self.assertEqual((status, doc["error"]), (401, "unauthorized"))
        self.assertEqual(self.request("GET", "/v1/events", headers={})[0], 401)
        self.assertEqual(self.request("POST", "/v1/events", ev(),
                                      headers={"Authorization": "bearer " + KEY})[0], 202)

    def test_forbidden_and_key_rotation(self):
        self.faults(forbidden_keys=["revoked"])
        status, doc, _ = self.request("POST", "/v1/events", ev(),
                                      headers={"Authorization": "Bearer revoked"})
        self.assertEqual((status, doc["error"]), (403, "forbidden"))
        self.faults(api_key="new_key")
        self.assertEqual(self.post_event(ev(1))[0], 401)
        self.assertEqual(self.request("POST", "/v1/events", ev(1),
                                      headers={"Authorization": "Bearer new_key"})[0], 202)
        self.control("POST", "/_test/reset", {})          # keeps the key
        self.assertEqual(self.post_event(ev(1))[0], 401)
        self.control("POST", "/_test/reset", {"api_key": KEY})
        self.assertEqual(self.post_event(ev(1))[0], 202)
        self.assertEqual(self.stored()["sync_1"]["receipts"], 1)


class IdempotencyTest(MonkApiTestCase):

    def test_latest_version_wins(self):
        self.assert_accepted(ev(1, properties={"v": 1}))
        self.assert_accepted(ev(1, properties={"v": 2}))
        events = self.stored()
        self.assertEqual(list(events), ["sync_1"])
        self.assertEqual(events["sync_1"]["event"]["properties"], {"v": 2})
        self.assertEqual(events["sync_1"]["receipts"], 2)
        stats = self.control("GET", "/_test/stats")
        self.assertEqual((stats["events_received"], stats["events_stored"]), (2, 1))

    def test_batch_retry(self):
        batch = [ev(i) for i in range(10)]
        self.assertEqual(self.post_batch(batch)[0], 202)
        self.assertEqual(self.post_batch(batch + [ev(10), ev(3, eventName="x")])[0], 202)
        events = self.stored()
        self.assertEqual(len(events), 11)
        self.assertEqual(events["sync_3"]["receipts"], 3)
        self.assertEqual(events["sync_3"]["event"]["eventName"], "x")
        self.assertEqual(events["sync_10"]["receipts"], 1)
        _, doc, _ = self.request("GET", "/v1/events?limit=1000")
        self.assertEqual(len(doc["data"]), 11)


class ListEventsTest(MonkApiTestCase):

    def load(self):
        events = []
        for i in range(25):
            events.append(ev(i, externalCustomerId="cust_a" if i % 2 else "cust_b",
                             eventName="api_call" if i % 3 else "login",
                             timestamp="2026-03-%02dT%02d:00:00Z" % (14 + i // 10, i % 24)))
        self.assertEqual(self.post_batch(events)[0], 202)
        return events

    def list_all(self, query, limit):
        out, cursor, pages = [], None, 0
        while True:
            q = query + "&limit=%d" % limit + ("&cursor=" + cursor if cursor else "")
            status, doc, _ = self.request("GET", "/v1/events?" + q)
            self.assertEqual(status, 200, doc)
            self.assertLessEqual(len(doc["data"]), limit)
            out += doc["data"]
            pages += 1
            if not doc["hasMore"]:
                self.assertIsNone(doc["nextCursor"])
                return out, pages
            cursor = doc["nextCursor"]

    def test_pagination(self):
        events = self.load()
        out, pages = self.list_all("", 10)
        self.assertEqual(pages, 3)
        self.assertEqual(len(out), 25)
        self.assertEqual(len({e["idempotencyKey"] for e in out}), 25)
        order = [(e["timestamp"], e["idempotencyKey"]) for e in out]
        self.assertEqual(order, sorted(order))
        self.assertEqual(sorted(out, key=lambda e: e["idempotencyKey"]),
                         sorted(events, key=lambda e: e["idempotencyKey"]))
        out, pages = self.list_all("", 25)
        self.assertEqual((len(out), pages), (25, 1))
        _, doc, _ = self.request("GET", "/v1/events")
        self.assertEqual(len(doc["data"]), 25)          # default limit 100

    def test_same_timestamp_ordered_by_key(self):
        self.post_batch([ev(i, timestamp="2026-03-15T10:00:00Z") for i in (5, 3, 9, 1, 7)])
        out, pages = self.list_all("", 2)
        self.assertEqual([e["idempotencyKey"] for e in out], ["sync_1", "sync_3", "sync_5", "sync_7",
                                                             "sync_9"])
        self.assertEqual(pages, 3)

    def test_filters(self):
        events = self.load()
        out, _ = self.list_all("externalCustomerId=cust_a&eventName=login", 2)
        want = [e for e in events if e["externalCustomerId"] == "cust_a" and e["eventName"] == "login"]
        self.assertEqual(sorted(e["idempotencyKey"] for e in out),
                         sorted(e["idempotencyKey"] for e in want))
        # start inclusive, end exclusive
        out, _ = self.list_all("start=2026-03-14T05:00:00Z&end=2026-03-14T08:00:00Z", 100)
        self.assertEqual([e["timestamp"] for e in out],
                         ["2026-03-14T05:00:00Z", "2026-03-14T06:00:00Z", "2026-03-14T07:00:00Z"])
        # a date means midnight UTC
        out, _ = self.list_all("start=2026-03-15&end=2026-03-16", 3)
        self.assertEqual(sorted(e["idempotencyKey"] for e in out), ["sync_%d" % i for i in range(10, 20)])
        # offsets are honoured: 2026-03-14T06:00:00+01:00 is 05:00Z
        out, _ = self.list_all("start=2026-03-14T06:00:00%2B01:00&end=2026-03-14T06:00:00Z", 100)
        self.assertEqual([e["timestamp"] for e in out], ["2026-03-14T05:00:00Z"])
        self.post_event(ev(99, externalCustomerId=DROP, customerId="c-uuid"))
        out, _ = self.list_all("customerId=c-uuid", 10)
        self.assertEqual([e["idempotencyKey"] for e in out], ["sync_99"])

    def test_bad_queries(self):
        for q in ("limit=0", "limit=1001", "limit=x", "start=yesterday", "end=2026-02-30",
                  "cursor=notacursor"):
            with self.subTest(query=q):
                status, doc, _ = self.request("GET", "/v1/events?" + q)
                self.assertEqual(status, 400, doc)
        self.assertEqual(self.request("GET", "/v1/events?limit=1000")[0], 200)

    def test_usage_cost(self):
        self.load()
        status, doc, _ = self.request("POST", "/v1/usage/cost",
                                      {"externalCustomerId": "cust_a", "start": "2026-03-14",
                                       "end": "2026-03-15"})
        self.assertEqual(status, 200, doc)
        self.assertEqual(doc["eventCount"], 5)           # odd i < 10
        self.assertAlmostEqual(doc["cost"], 0.05)
        self.assertEqual((doc["externalCustomerId"], doc["start"], doc["end"]),
                         ("cust_a", "2026-03-14", "2026-03-15"))
        status, doc, _ = self.request("POST", "/v1/usage/cost", {"eventName": "login", "unitPrice": 2})
        self.assertEqual((status, doc["eventCount"], doc["cost"], doc["eventName"]), (200, 9, 18, "login"))
        for bad in ([1], {"start": "nope"}, {"unitPrice": "1"}, {"customerId": 5}):
            with self.subTest(body=bad):
                self.assertEqual(self.request("POST", "/v1/usage/cost", bad)[0], 400)
        self.assertEqual(self.request("POST", "/v1/usage/cost", b"nope")[0], 400)


class FaultTest(MonkApiTestCase):

    def test_script(self):
        self.faults(script=["500", 429, "503", "drop", "ok"], retry_after=3)
        status, doc, r = self.post_event(ev(1))
        self.assertEqual((status, r.getheader("Retry-After")), (500, None))
        status, doc, r = self.post_event(ev(1))
        self.assertEqual((status, r.getheader("Retry-After"), doc["error"]), (429, "3", "rate_limited"))
        status, doc, r = self.post_event(ev(1))
        self.assertEqual((status, r.getheader("Retry-After")), (503, "3"))
        with self.assertRaises(http.client.RemoteDisconnected):
            self.post_event(ev(1))
        self.assertEqual(self.stored(), {})                 # nothing stored by the faults
        self.assertEqual(self.post_event(ev(1))[0], 202)    # "ok"
        self.assertEqual(self.post_event(ev(1))[0], 202)    # script exhausted
        self.assertEqual(self.stored()["sync_1"]["receipts"], 2)
        log = self.control("GET", "/_test/requests?last=10")["requests"]
        self.assertEqual([x["status"] for x in log], [500, 429, 503, "drop", 202, 202])
        self.assertEqual([x["fault"] for x in log], ["500", "429", "503", "drop", None, None])
        by = self.control("GET", "/_test/stats")["by_status"]
        self.assertEqual(by, {"500": 1, "429": 1, "503": 1, "drop": 1, "202": 2})

    def test_retry_after_zero_and_paths(self):
        self.faults(fail_rate={"429": 1.0}, retry_after=0, paths=["/v1/events/batch"])
        status, _, r = self.post_batch([ev(1)])
        self.assertEqual((status, r.getheader("Retry-After")), (429, "0"))
        self.assertEqual(self.request("GET", "/v1/events")[0], 200)    # other paths unaffected
        self.faults(clear=True)
        self.assertEqual(self.post_batch([ev(1)])[0], 202)

    def test_fail_rate_seeded(self):
        def run():
            self.faults(clear=True, fail_rate={"500": 0.5}, seed=42)
            return [self.post_event(ev(i))[0] for i in range(40)]
        first = run()
        self.assertEqual(first, run())
        self.assertTrue(10 < first.count(500) < 30, first)
        self.assertEqual(first.count(202) + first.count(500), 40)

    def test_drop_rate(self):
        self.faults(drop_rate=1.0)
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            self.post_batch([ev(1)])
        self.assertEqual(self.stored(), {})

    def test_drop_after_store(self):
        self.faults(script=["drop_after_store"])
        with self.assertRaises(http.client.RemoteDisconnected):
            self.post_batch([ev(1), ev(2)])
        self.assertEqual(sorted(self.stored()), ["sync_1", "sync_2"])
        self.assertEqual(self.post_batch([ev(1), ev(2)])[0], 202)      # the client's retry
        events = self.stored()
        self.assertEqual((len(events), events["sync_1"]["receipts"]), (2, 2))
        self.faults(drop_after_store_rate=1.0)
        with self.assertRaises(http.client.RemoteDisconnected):
            self.post_event(ev(3))
        self.assertIn("sync_3", self.stored())

    def test_delay(self):
        self.faults(delay_ms=300)
        t0 = time.monotonic()
        self.assertEqual(self.post_event(ev(1))[0], 202)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        with self.assertRaises((socket.timeout, TimeoutError)):       # a client giving up early
            self.post_event_timeout(ev(2), 0.1)
        self.faults(delay_ms=0)
        t0 = time.monotonic()
        self.assertEqual(self.post_event(ev(3))[0], 202)
        self.assertLess(time.monotonic() - t0, 0.3)
        time.sleep(0.3)                                               # let the slow one finish
        self.assertEqual(sorted(self.stored()), ["sync_1", "sync_2", "sync_3"])

    def post_event_timeout(self, e, timeout):
        return self.request("POST", "/v1/events", e, timeout=timeout)

    def test_bad_fault_config(self):
        for cfg in ({"nope": 1}, {"drop_rate": 2}, {"fail_rate": {"abc": 0.5}}, {"script": ["boom"]},
                    {"delay_ms": -1}, {"fail_rate": [500]}):
            with self.subTest(cfg=cfg):
                self.assertEqual(self.request("POST", "/_test/faults", cfg, headers={})[0], 400)
        cfg = self.control("GET", "/_test/faults")
        self.assertEqual((cfg["drop_rate"], cfg["script"], cfg["fail_rate"]), (0.0, [], {}))

    def test_concurrency_tracked(self):
        import threading
        self.faults(delay_ms=200)
        threads = [threading.Thread(target=self.post_event, args=(ev(i),)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(self.control("GET", "/_test/stats")["max_concurrent"], 4)


class ProtocolTest(MonkApiTestCase):

    def test_keep_alive(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        ua = dict(AUTH, **{"User-Agent": "monk-postgres/0.1"})
        self.assertEqual(self.request("POST", "/v1/events/batch", {"events": [ev(1)]}, ua, conn=c)[0], 202)
        sock = c.sock
        self.assertEqual(self.request("POST", "/v1/events", ev(2), ua, conn=c)[0], 202)
        self.assertEqual(self.request("POST", "/v1/events", ev(eventName=""), ua, conn=c)[0], 400)
        self.assertEqual(self.request("GET", "/v1/events", None, ua, conn=c)[0], 200)
        self.assertIs(c.sock, sock)                       # http.client did not reconnect
        c.close()
        log = self.control("GET", "/_test/requests?last=4")["requests"]
        self.assertEqual(len({x["conn"] for x in log}), 1)
        self.assertEqual([x["conn_seq"] for x in log], [1, 2, 3, 4])
        self.assertEqual(log[0]["user_agent"], "monk-postgres/0.1")
        self.assertEqual(log[0]["content_type"], "application/json")
        self.assertEqual([x["events"] for x in log], [1, 1, 1, None])
        self.assertNotIn(KEY, json.dumps(log))
        stats = self.control("GET", "/_test/stats")
        self.assertEqual(stats["user_agents"], ["monk-postgres/0.1"])
        self.assertNotIn(KEY, json.dumps(stats))

    def test_not_found_and_method(self):
        self.assertEqual(self.request("GET", "/v1/nothing")[0], 404)
        self.assertEqual(self.request("GET", "/")[0], 404)
        self.assertEqual(self.request("GET", "/_test/nothing", headers={})[0], 404)
        self.assertEqual(self.request("GET", "/v1/events/batch")[0], 405)
        self.assertEqual(self.request("DELETE", "/v1/events")[0], 405)
        self.assertEqual(self.request("PUT", "/v1/usage/cost", {})[0], 405)
        self.assertEqual(self.request("POST", "/_test/stats", {}, headers={})[0], 405)


class ControlTest(MonkApiTestCase):

    def test_events_keys_lose_reset(self):
        self.post_batch([ev(i) for i in (3, 1, 2)])
        doc = self.control("GET", "/_test/events?keys_only=1")
        self.assertEqual(doc, {"keys": ["sync_1", "sync_2", "sync_3"], "count": 3})
        self.assertEqual(self.control("POST", "/_test/lose", {"keys": ["sync_2", "nope"]}), {"lost": 1})
        self.assertEqual(self.control("GET", "/_test/events")["count"], 2)
        _, doc, _ = self.request("GET", "/v1/events")
        self.assertEqual([e["idempotencyKey"] for e in doc["data"]], ["sync_1", "sync_3"])
        self.faults(script=[500], delay_ms=10)
        self.control("POST", "/_test/reset", {})
        stats = self.control("GET", "/_test/stats")
        self.assertEqual((stats["requests"], stats["events_stored"], stats["batches"]), (0, 0, 0))
        cfg = self.control("GET", "/_test/faults")
        self.assertEqual((cfg["script"], cfg["delay_ms"]), ([], 0))
        self.assertEqual(self.control("GET", "/_test/requests?last=5"), {"requests": []})


class LifecycleTest(unittest.TestCase):

    def test_banner_port_file_and_sigterm(self):
        s = ServerProcess()
        self.assertEqual(s.banner, "monk_api listening on http://127.0.0.1:%d" % s.port)
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        c.request("GET", "/_test/stats")
        self.assertEqual(c.getresponse().status, 200)
        c.close()
        self.assertEqual(s.stop(), 0)


if __name__ == "__main__":
    unittest.main()
