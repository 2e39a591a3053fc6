"""The TOML writer: any string survives as a value, a key and a comment; documents are
written in an order TOML accepts."""

from __future__ import annotations

import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tproxy.importers.draft import Draft
from trio_tproxy.importers.toml_out import Document, Table, comment_lines, quote


@settings(max_examples=300)
@given(st.text(), st.text(min_size=1), st.text())
def test_strings_keys_and_comments_round_trip(text: str, name: str, remark: str) -> None:
    doc = Document(intro=[remark])
    table = doc.table("section", name)
    table.note(remark)
    table.set(name, text, remark)
    table.set("list", [text, 1, True], remark)
    parsed = tomllib.loads(doc.render())
    # A lone surrogate cannot be written as UTF-8: it becomes U+FFFD.
    wanted = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    key = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in name)
    assert parsed["section"][key][key] == wanted
    assert parsed["section"][key]["list"] == [wanted, 1, True]


def test_escapes() -> None:
    assert quote('a"b\\c\n\t\x00\x7f') == '"a\\"b\\\\c\\n\\t\\u0000\\u007F"'
    assert tomllib.loads(f"x = {quote('é ✓ 🙂')}")["x"] == "é ✓ 🙂"


def test_comments_cannot_end_early() -> None:
    for line in comment_lines("one\ntwo\r\nthree\x00 = 1\u2028[x]"):
        assert line.startswith("#") and "\n" not in line
    assert tomllib.loads("\n".join(comment_lines("a\n[b]\nc = 1"))) == {}


def test_a_draft_puts_sub_tables_after_their_parents_keys() -> None:
    draft = Draft()
    draft.dns.set("cache", False)
    draft.dns_hosts.set("router.lan", ["192.168.1.1"])
    for address in ("1.1.1.1:53", "8.8.8.8:53"):
        table = Table(None)
        table.set("address", address)
        draft.dns_servers.append(table)
    inbound, sniffing = Table(None), Table(None)
    inbound.set("tag", "in")
    sniffing.set("enabled", True)
    draft.inbounds.append((inbound, sniffing))
    parsed = tomllib.loads(draft.render())
    assert parsed == {
        "inbounds": [{"tag": "in", "sniffing": {"enabled": True}}],
        "dns": {
            "cache": False,
            "hosts": {"router.lan": ["192.168.1.1"]},
            "servers": [{"address": "1.1.1.1:53"}, {"address": "8.8.8.8:53"}],
        },
    }
