"""The docs are executable: every SQL block in docs/*.md runs, and every
`potato-runs <command>` the docs and the README name exists.

SQL fences must carry a label (the fence's info string):

- ```sql postgres        runs against the test database (the `pg_dsn` fixture) in a
                         transaction that is always rolled back;
- ```sql postgres scratch
                         the same, inside a fresh schema (`CREATE SCHEMA`, then
                         `SET LOCAL search_path = <scratch>, public`), for DDL that
                         would clash with the migrated schema;
- ```sql citus           runs on the Citus tier's coordinator (tests/citus/test_docs_sql.py)
                         in a transaction that is always rolled back;
- ```sql sqlite          runs in one in-memory sqlite3 database per document, in
                         document order (later blocks see earlier blocks' tables);
- `expect-error` or `expect-error=TOKEN` after either label: the block must fail
  with an integrity error: for postgres a SQLSTATE of class 23 or PX (TOKEN, when
  given, is the exact SQLSTATE); for sqlite an sqlite3.IntegrityError (TOKEN, when
  given, must occur in its message). A sqlite block that fails is rolled back to
  a savepoint, so it leaves the database as it found it.

A plain ```sql fence, an unknown label or modifier, a SQL-ish language name
(```postgres, ```sqlite, ```psql, ...) or an unlabelled fence holding SQL fails.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import typer
from typer.testing import CliRunner

from potato_runs.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
REQUIRED_DOCS = ("architecture.md", "decisions.adrs.md", "glossary.md", "v2.md", "playbooks.md",
                 "features_overview.md")

SQL_LANGS = {"sql", "postgres", "postgresql", "pgsql", "plpgsql", "psql", "sqlite", "sqlite3",
             "mysql", "tsql", "plsql"}
ENGINES = {"postgres", "sqlite", "citus"}
LOOKS_LIKE_SQL = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|WITH|BEGIN|SET|DO|EXPLAIN|PRAGMA)\b",
    re.IGNORECASE | re.MULTILINE)
FENCE_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    info: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def words(self) -> list[str]:
        return self.info.split()

    @property
    def engine(self) -> str | None:
        w = self.words
        return w[1] if len(w) >= 2 and w[0] == "sql" and w[1] in ENGINES else None

    @property
    def modifiers(self) -> list[str]:
        return self.words[2:]

    @property
    def expect_error(self) -> tuple[bool, str | None]:
        for m in self.modifiers:
            if m == "expect-error":
                return True, None
            if m.startswith("expect-error="):
                return True, m.split("=", 1)[1]
        return False, None

    @property
    def scratch(self) -> bool:
        return "scratch" in self.modifiers


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file (``` or ~~~ fences)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1
            continue
        fence, start = m["fence"], i
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        i += 1
        body: list[str] = []
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i])
            i += 1
        out.append(Block(path, start + 1, m["info"].strip(), "\n".join(body) + "\n"))
        i += 1
    return out


def doc_paths() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def all_blocks() -> list[Block]:
    return [b for p in doc_paths() for b in fenced_blocks(p)]


def label_problem(b: Block) -> str | None:
    """Why a block's label is not acceptable, or None."""
    w = b.words
    lang = w[0].lower() if w else ""
    if lang == "sql":
        if len(w) < 2 or w[1] not in ENGINES:
            return (f"{b.where}: label the block ```sql postgres, ```sql citus or ```sql sqlite "
                    f"(got {b.info!r})")
        for m in b.modifiers:
            if m not in ("expect-error", "scratch") and not m.startswith("expect-error="):
                return f"{b.where}: unknown modifier {m!r} in {b.info!r}"
            if m == "scratch" and w[1] != "postgres":
                return f"{b.where}: `scratch` applies to postgres blocks only"
        return None
    if lang in SQL_LANGS:
        return f"{b.where}: SQL must be labelled ```sql postgres or ```sql sqlite (got {b.info!r})"
    if not lang and LOOKS_LIKE_SQL.search(b.body):
        return f"{b.where}: an unlabelled block holds SQL; label it ```sql postgres/sqlite"
    return None


def sql_blocks(engine: str) -> list[Block]:
    return [b for b in all_blocks() if label_problem(b) is None and b.engine == engine]


# --------------------------------------------------------------------------- the docs exist
@pytest.mark.parametrize("name", REQUIRED_DOCS)
def test_doc_exists_and_is_not_empty(name: str) -> None:
    path = DOCS / name
    assert path.is_file(), f"docs/{name} is missing"
    assert len(path.read_text(encoding="utf-8").strip()) > 200


def test_every_sql_block_is_labelled() -> None:
    problems = [p for b in all_blocks() if (p := label_problem(b))]
    assert not problems, "\n".join(problems)


def test_docs_hold_runnable_sql_for_both_engines() -> None:
    assert sql_blocks("postgres"), "no ```sql postgres block in docs/"
    assert sql_blocks("sqlite"), "no ```sql sqlite block in docs/"


# --------------------------------------------------------------------------- the label checker itself
@pytest.mark.parametrize(("info", "body", "ok"), [
    ("sql postgres", "SELECT 1;", True),
    ("sql sqlite expect-error", "SELECT 1;", True),
    ("sql postgres expect-error=23P01 scratch", "SELECT 1;", True),
    ("sql citus", "SELECT 1;", True),
    ("sql citus scratch", "SELECT 1;", False),
    ("sql", "SELECT 1;", False),
    ("sql mysql", "SELECT 1;", False),
    ("sql sqlite scratch", "SELECT 1;", False),
    ("sql postgres rollback-please", "SELECT 1;", False),
    ("postgres", "SELECT 1;", False),
    ("sqlite", "SELECT 1;", False),
    ("", "SELECT 1;", False),
    ("", "select user_id from runs;", False),
    ("", "Phase 6A -> 6B", True),
    ("text", "SELECT is a word here", True),
    ("bash", "potato-runs check", True),
])
def test_label_checker(info: str, body: str, ok: bool) -> None:
    problem = label_problem(Block(ROOT / "docs" / "x.md", 1, info, body))
    assert (problem is None) == ok, problem


def test_fence_parser_reads_info_strings_and_bodies(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text("text\n```sql sqlite expect-error=boom\nSELECT 1;\n```\n"
                  "~~~\nSELECT 2;\n~~~\n````text\n```sql\n````\n", encoding="utf-8")
    blocks = fenced_blocks(md)
    assert [(b.line, b.info, b.body) for b in blocks] == [
        (2, "sql sqlite expect-error=boom", "SELECT 1;\n"),
        (5, "", "SELECT 2;\n"),
        (8, "text", "```sql\n"),
    ]
    assert blocks[0].expect_error == (True, "boom")


# --------------------------------------------------------------------------- sqlite
def sqlite_docs() -> list[Path]:
    return sorted({b.path for b in sql_blocks("sqlite")})


def run_sqlite_doc(blocks: list[Block]) -> sqlite3.Connection:
    """Runs a document's sqlite blocks in order in one in-memory database."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for b in blocks:
        expected, token = b.expect_error
        if not expected:
            try:
                conn.executescript(b.body)
            except sqlite3.Error as exc:
                pytest.fail(f"{b.where}: sqlite block failed: {type(exc).__name__}: {exc}")
            continue
        try:
            conn.executescript(f"SAVEPOINT doc_block;\n{b.body}\nRELEASE doc_block;\n")
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO doc_block")
            conn.execute("RELEASE doc_block")
            if token is not None:
                assert token in str(exc), f"{b.where}: expected {token!r} in the error, got {exc}"
            continue
        except sqlite3.Error as exc:
            pytest.fail(f"{b.where}: expected an integrity error, got {type(exc).__name__}: {exc}")
        pytest.fail(f"{b.where}: the block is marked expect-error but ran without error")
    return conn


@pytest.mark.parametrize("path", sqlite_docs(), ids=lambda p: p.name)
def test_sqlite_blocks_run(path: Path) -> None:
    run_sqlite_doc([b for b in sql_blocks("sqlite") if b.path == path]).close()


def adr_sqlite_schema() -> sqlite3.Connection:
    """The ADR's SQLite variant: its blocks that are expected to succeed."""
    blocks = [b for b in sql_blocks("sqlite")
              if b.path.name == "decisions.adrs.md" and not b.expect_error[0]]
    assert blocks, "decisions.adrs.md has no ```sql sqlite block"
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(blocks[0].body)      # the first block is the DDL
    return conn


def test_adr_sqlite_examples_show_overlap_and_touch_rejected() -> None:
    tokens = {b.expect_error[1] for b in sql_blocks("sqlite")
              if b.path.name == "decisions.adrs.md" and b.expect_error[0]}
    assert {"runs_no_overlap", "runs_no_touch"} <= tokens, tokens


@pytest.mark.parametrize(("sql", "token"), [
    # Existing run 2025-06-10..2025-06-12 and the active run 2025-06-20..2025-06-22.
    ("INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ('u', '2025-06-12', '2025-06-14', 3)", "runs_no_overlap"),
    ("INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ('u', '2025-06-01', '2025-06-30', 30)", "runs_no_overlap"),
    ("INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ('u', '2025-06-13', '2025-06-14', 2)", "runs_no_touch"),
    ("INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ('u', '2025-06-15', '2025-06-19', 5)", "runs_no_touch"),
    ("UPDATE runs SET end_date = '2025-06-20', day_count = 11 WHERE start_date = '2025-06-10'",
     "runs_no_overlap"),
    ("UPDATE runs SET end_date = '2025-06-19', day_count = 10 WHERE start_date = '2025-06-10'",
     "runs_no_touch"),
    ("INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ('u', '2025-07-01', '2025-07-02', 5)", "runs_day_count_matches"),
    ("INSERT INTO runs (user_id, start_date, end_date, day_count) "
     "VALUES ('u', '2025-07-02', '2025-07-01', 0)", "runs_end_not_before_start"),
    ("INSERT INTO runs (user_id, start_date, end_date, day_count, active) "
     "VALUES ('u', '2025-07-01', '2025-07-01', 1, 1)", "UNIQUE"),
    ("INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
     "VALUES ('u', '2024-12-31', 'UTC')", "checkin_date_not_before_launch"),
    ("INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
     "VALUES ('u', '2025-02-30', 'UTC')", "CHECK"),
])
def test_adr_sqlite_variant_refuses_bad_rows(sql: str, token: str) -> None:
    """Independently of the ADR's own examples: its DDL refuses every bad row."""
    conn = adr_sqlite_schema()
    conn.executescript(
        "INSERT INTO users (user_id, time_zone) VALUES ('u', 'UTC');"
        "INSERT INTO runs (user_id, start_date, end_date, day_count, active) VALUES "
        "('u', '2025-06-10', '2025-06-12', 3, 0), ('u', '2025-06-20', '2025-06-22', 3, 1);")
    before = conn.execute("SELECT * FROM runs ORDER BY run_id").fetchall()
    with pytest.raises(sqlite3.IntegrityError) as err:
        conn.execute(sql)
    assert token in str(err.value)
    assert conn.execute("SELECT * FROM runs ORDER BY run_id").fetchall() == before


def test_adr_sqlite_variant_accepts_good_rows() -> None:
    conn = adr_sqlite_schema()
    conn.executescript(
        "INSERT INTO users (user_id, time_zone) VALUES ('u', 'UTC'), ('v', 'UTC');"
        "INSERT INTO runs (user_id, start_date, end_date, day_count, active) VALUES "
        "('u', '2028-02-27', '2028-03-01', 4, 0), ('u', '2028-03-03', '2028-03-03', 1, 1),"
        "('v', '2028-02-29', '2028-03-02', 3, 1);"       # another user may overlap
        "INSERT INTO daily_checkins (user_id, checkin_date, time_zone) "
        "VALUES ('u', '2028-02-29', 'UTC');")
    assert conn.execute("SELECT count(*) FROM runs").fetchone() == (3,)


# --------------------------------------------------------------------------- postgres
@pytest.mark.parametrize("block", sql_blocks("postgres"), ids=lambda b: b.where)
async def test_postgres_block_runs(pg_dsn: str, block: Block) -> None:
    conn = await asyncpg.connect(pg_dsn)
    tx = conn.transaction()
    await tx.start()
    try:
        if block.scratch:
            schema = f"docs_scratch_{uuid.uuid4().hex[:12]}"
            await conn.execute(f"CREATE SCHEMA {schema}")
            # public stays on the path: btree_gist's operator classes live there.
            await conn.execute(f"SET LOCAL search_path = {schema}, public")
        expected, token = block.expect_error
        if not expected:
            try:
                await conn.execute(block.body)
            except asyncpg.PostgresError as exc:
                pytest.fail(f"{block.where}: postgres block failed: {exc.sqlstate} {exc}")
        else:
            with pytest.raises(asyncpg.PostgresError) as err:
                await conn.execute(block.body)
            state = str(err.value.sqlstate)
            if token is not None:
                assert state == token, f"{block.where}: expected SQLSTATE {token}, got {state}"
            else:
                assert state.startswith(("23", "PX")), \
                    f"{block.where}: expected an integrity or domain error, got {state} {err.value}"
    finally:
        await tx.rollback()
        await conn.close()


async def test_postgres_blocks_leave_nothing_behind(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'docs_scratch_%'")
    finally:
        await conn.close()
    assert left == 0


# --------------------------------------------------------------------------- CLI commands named in docs
COMMAND = re.compile(r"(?<![\w-])potato-runs[ \t]+(?P<cmd>[a-z][a-z0-9-]*)(?P<rest>[^\n`]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def code_segments(path: Path) -> Iterator[str]:
    """Inline code spans and the lines of fenced blocks: where flags are spelled out."""
    text = path.read_text(encoding="utf-8")
    for b in fenced_blocks(path):
        yield from b.body.splitlines()
    yield from INLINE_CODE.findall(text)


def named_commands() -> list[tuple[str, str, frozenset[str]]]:
    """(where, command, flags written after it) for every mention in docs/ and README."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in [*doc_paths(), README]:
        if not path.is_file():
            continue
        where = str(path.relative_to(ROOT))
        for m in COMMAND.finditer(path.read_text(encoding="utf-8")):
            found.setdefault((where, m["cmd"]), set())
        for seg in code_segments(path):
            for m in COMMAND.finditer(seg):
                rest = re.split(r"\s#|&&|\|\||;|\|", m["rest"])[0]
                found.setdefault((where, m["cmd"]), set()).update(FLAG.findall(rest))
    return [(w, c, frozenset(f)) for (w, c), f in sorted(found.items())]


def cli_options() -> dict[str, set[str]]:
    group = typer.main.get_command(cli_app)
    commands = getattr(group, "commands", {})

    def options(cmd: Any) -> set[str]:
        # A group (e.g. `flags`, `shadow`): the options of any of its subcommands.
        subs = getattr(cmd, "commands", {}).values()
        return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}.union(
            *(options(sub) for sub in subs))

    return {name: options(cmd) for name, cmd in commands.items()}


def test_docs_name_cli_commands() -> None:
    named = {c for _, c, _ in named_commands()}
    assert {"rebuild", "check"} <= named, named


@pytest.mark.parametrize(("where", "command", "flags"), named_commands(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_cli_command_named_in_docs_exists(where: str, command: str, flags: frozenset[str]) -> None:
    runner = CliRunner()
    top = runner.invoke(cli_app, ["--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert top.exit_code == 0, top.output
    options = cli_options()
    assert command in options, f"{where} names `potato-runs {command}`, which the CLI lacks " \
                               f"(commands: {sorted(options)})"
    assert command in top.output, f"`potato-runs --help` does not list {command}"
    sub = runner.invoke(cli_app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert sub.exit_code == 0, sub.output
    unknown = sorted(flags - options[command] - {"--help"})
    assert not unknown, f"{where}: `potato-runs {command}` has no option(s) {unknown}"


def test_command_scanner_finds_flags_and_ignores_image_tags(tmp_path: Path) -> None:
    seg = "docker build -t potato-runs . && potato-runs rebuild --user ID [--from D] # --nope"
    hits = [(m["cmd"], FLAG.findall(re.split(r"\s#|&&|\|\||;|\|", m["rest"])[0]))
            for m in COMMAND.finditer(seg)]
    assert hits == [("rebuild", ["--user", "--from"])]


# --------------------------------------------------------------------------- references to tests and links
TEST_REF = re.compile(r"((?:tests/[\w/]+/)?test_\w+\.py)?::(\w+)")


def find_test_file(name: str) -> Path | None:
    if "/" in name:
        path = ROOT / name
        return path if path.is_file() else None
    # A module of the Citus tier may share its name with the one in tests/integration
    # whose tests it re-runs by importing them: a bare name means the one defining them.
    hits = sorted((ROOT / "tests").rglob(name), key=lambda p: ("citus" in p.parts, p))
    return hits[0] if hits else None


def cited_tests() -> list[tuple[str, str, str]]:
    """(where, file, test name) for every `file::name` (or `::name` after a file on the
    same line) in docs/."""
    out = []
    for path in doc_paths():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            current: str | None = None
            for m in TEST_REF.finditer(line):
                current = m[1] or current
                if current is None:
                    continue
                out.append((f"{path.name}:{n}", current, m[2]))
    return out



def test_docs_cite_tests() -> None:
    assert len(cited_tests()) >= 20


@pytest.mark.parametrize(("where", "file", "name"), cited_tests(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_cited_test_exists(where: str, file: str, name: str) -> None:
    path = find_test_file(file)
    assert path is not None, f"{where}: {file} does not exist"
    text = path.read_text(encoding="utf-8")
    assert re.search(rf"^\s*(async\s+)?def {re.escape(name)}\b|^class {re.escape(name)}\b",
                     text, re.MULTILINE), f"{where}: {file} has no test {name}"


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    fenced = {n for b in fenced_blocks(path)
              for n in range(b.line, b.line + b.body.count("\n") + 2)}
    seen: dict[str, int] = {}
    out = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m or n in fenced:
            continue
        base = slug(m[1])
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def test_slug() -> None:
    assert slug("Phase 6E: Cutover via `ff.potato.runs_v2`") == "phase-6e-cutover-via-ffpotatoruns_v2"
    assert slug("Cutover/rollback (planned)") == "cutoverrollback-planned"
    assert slug("Data Invariants & DB Constraints") == "data-invariants--db-constraints"


def test_relative_links_and_anchors_resolve() -> None:
    problems = []
    for path in [*doc_paths(), README]:
        if not path.is_file():
            continue
        for m in LINK.finditer(path.read_text(encoding="utf-8")):
            target = m["target"]
            if re.match(r"^[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{path.name}: link to missing {target}")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{path.name}: no heading for #{anchor} in {dest.name}")
    assert not problems, "\n".join(problems)
