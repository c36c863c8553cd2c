"""Reads an HL7 v2 file and its tokenized copy with python-hl7, an HL7 parser
independent of phivault's, and checks that the copy has the same messages,
segments, fields, repetitions, components and subcomponents, and that the
leaves that differ are exactly those the built-in profile names (written out
again below from the HL7 v2.5.1 data types, not from phivault's table).

Usage: python3 hl7_check.py INPUT TOKENIZED   (files of messages or MLLP frames)
Prints the number of leaves that changed.
"""

import re
import sys

import hl7

# Parts of each data type: (component, subcomponent, condition, namespace, date).
CX = [(1, 1, (5, "SS"), "ssn", False), (1, 1, None, "mrn", False)]
XPN = [(1, s, None, "name", False) for s in (1, 3, 5)] + [(c, 1, None, "name", False) for c in (2, 3)]
XAD = [(1, s, None, "text", False) for s in (1, 2, 3)] + [
    (c, 1, None, ns, False) for c, ns in ((2, "text"), (3, "text"), (5, "zip"), (8, "text"), (9, "text"))
]
XTN = [(c, 1, None, ns, False) for c, ns in ((1, "phone"), (4, "email"), (7, "phone"), (12, "phone"))]
DATE = [(1, 1, None, "dob", True)]


def plain(ns):
    return [(1, 1, None, ns, False)]


PROFILE = {
    "PID": {2: CX, 3: CX, 4: CX, 5: XPN, 6: XPN, 7: DATE, 9: XPN, 11: XAD, 12: plain("text"),
            13: XTN, 14: XTN, 18: CX, 19: plain("ssn"), 20: plain("mrn"), 21: CX,
            23: plain("text"), 29: DATE},
    "NK1": {2: XPN, 4: XAD, 5: XTN, 6: XTN, 16: DATE, 30: XPN, 31: XTN, 32: XAD, 33: CX,
            37: plain("ssn")},
    "GT1": {2: CX, 3: XPN, 4: XPN, 5: XAD, 6: XTN, 7: XTN, 8: DATE, 12: plain("ssn"),
            16: XPN, 17: XAD, 18: XTN, 19: CX},
    "IN1": {16: XPN, 18: DATE, 19: XAD, 36: plain("mrn"), 49: CX},
    "IN2": {1: CX, 2: plain("ssn"), 6: plain("mrn"), 8: plain("mrn"), 61: CX, 63: XTN},
    "MRG": {1: CX, 2: CX, 3: CX, 4: CX, 7: XPN},
}


def messages(path):
    """The messages of a file, MLLP frames unwrapped."""
    text = open(path, "rb").read().decode("utf-8")
    # python-hl7 ends segments with CR only.
    text = text.replace("\x0b", "").replace("\x1c", "").replace("\r\n", "\r").replace("\n", "\r")
    return list(hl7.parse_batch(text))


def grid(node, depth):
    """A python-hl7 node as nested lists of exactly `depth` levels: a plain
    string stands for one child at every level below it."""
    if depth == 0:
        return str(node)
    if isinstance(node, str):
        return [grid(node, depth - 1)]
    return [grid(child, depth - 1) for child in node]


def segments(message):
    out = []
    for segment in message:
        name = str(segment[0])
        fields = {}
        for number in range(1, len(segment)):
            if name == "MSH" and number <= 2:
                fields[number] = [[[str(segment[number])]]]
            else:
                fields[number] = grid(segment[number], 3)
        out.append((name, fields))
    return out


def leaf(fields, f, r, c, s):
    try:
        return fields[f][r][c - 1][s - 1]
    except (KeyError, IndexError):
        return ""


def expected(message, name, fields):
    """Leaves (field, repetition, component, subcomponent) the profile names,
    each with whether it is a date."""
    out = {}
    for f, parts in PROFILE.get(name, {}).items():
        for r in range(len(fields.get(f, []))):
            for c, s, when, _ns, date in parts:
                value = leaf(fields, f, r, c, s)
                if value in ("", '""'):
                    continue
                if when and message.unescape(leaf(fields, f, r, when[0], 1)) != when[1]:
                    continue
                out.setdefault((f, r, c, s), date)
    return out


def main(before_path, after_path):
    before, after = messages(before_path), messages(after_path)
    assert len(before) == len(after), f"{len(before)} messages in, {len(after)} out"
    changed = 0
    for m, (mb, ma) in enumerate(zip(before, after), 1):
        sb, sa = segments(mb), segments(ma)
        assert [n for n, _ in sb] == [n for n, _ in sa], f"message {m}: segments differ"
        for (name, fb), (_, fa) in zip(sb, sa):
            shape = lambda fs: {f: [[len(c) for c in r] for r in v] for f, v in fs.items()}
            assert shape(fb) == shape(fa), f"message {m} {name}: the structure changed"
            want = expected(mb, name, fb)
            for f, reps in fb.items():
                for r, comps in enumerate(reps):
                    for c, subs in enumerate(comps, 1):
                        for s, old in enumerate(subs, 1):
                            new = fa[f][r][c - 1][s - 1]
                            where = f"message {m} {name}-{f}[{r + 1}].{c}.{s}"
                            if (f, r, c, s) not in want:
                                assert old == new, f"{where} changed but is not in the profile"
                                continue
                            assert old != new, f"{where} is in the profile but did not change"
                            changed += 1
                            if want[(f, r, c, s)]:
                                # A date: the day is replaced, a time after it kept.
                                assert re.fullmatch(r"\d{8}", new[:8]) and new[8:] == old[8:], where
    print(changed)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
