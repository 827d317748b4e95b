from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from bench.common import write_section
from bench.evaluation import (
    EVALUATION_DATABASE,
    EvaluationError,
    captions_read,
    categories_of,
    evaluation_child_run,
    evaluation_database_in_use_check,
    evaluation_in_separate_database,
    evaluation_markdown,
    evaluation_run,
    evaluation_work_dir,
)
from bench.region_evaluation import RegionReport, region_evaluation_run, region_markdown
from gallery.management.arguments import at_least, output_file_check


DEFAULT_SCENES = 300  # composite scenes of --regions


class Command(BaseCommand):
    help = ("Measure retrieval quality on a labelled folder (one sub-folder per category), in a database "
            "of its own (never the gallery in use): category precision@10 and mAP@50 for semantic only, "
            "content only and the hybrid policy; near-duplicate recall@1/@10 of generated copies; with "
            "--captions, text→image recall@1/@10. With --regions: search by region on composite scenes of the "
            "--data objects (with alpha) pasted on --backgrounds photos, against whole-scene queries.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", type=Path, required=True, help="folder with one sub-folder per category")
        parser.add_argument("--captions", type=Path,
                            help="UTF-8 text file, one 'category/relative/path<TAB>caption' per line "
                                 "(paths as under --data; blank lines and # comments are skipped)")
        parser.add_argument("--near-duplicates", type=at_least(0), default=50,
                            help="how many images get a generated near-duplicate copy (default 50)")
        parser.add_argument("--seed", type=at_least(0), default=0, help="picks the near-duplicates and their alterations")
        parser.add_argument("--database", default=EVALUATION_DATABASE,
                            help=f"the evaluation database, recreated by every run (default {EVALUATION_DATABASE})")
        parser.add_argument("--keep", action="store_true",
                            help="keep the evaluation database and its files afterwards (default: dropped)")
        parser.add_argument("--batch-size", type=at_least(1), default=None, help="images per model forward pass")
        parser.add_argument("--json", dest="json_path", type=Path,
                            help="also write the report (every number, the skipped files) as JSON to this file")
        parser.add_argument("--regions", action="store_true",
                            help="measure search by region: --data holds objects with alpha (one sub-folder per "
                                 "category), pasted onto the photos of --backgrounds")
        parser.add_argument("--backgrounds", type=Path, help="with --regions: a folder of background photos")
        parser.add_argument("--scenes", type=at_least(2), default=None,
                            help=f"with --regions: how many scenes (default {DEFAULT_SCENES})")
        parser.add_argument("--write-docs", action="store_true",
                            help="write the results as the 'Retrieval quality' section of docs/BENCHMARKS.md")
        # Set by the process that starts this command again on the evaluation database.
        parser.add_argument("--child-work-dir", type=Path, help=argparse.SUPPRESS)

    def handle(self, *args: Any, data: Path, captions: Path | None, near_duplicates: int, seed: int, database: str,
               keep: bool, batch_size: int | None, json_path: Path | None, write_docs: bool,
               child_work_dir: Path | None, regions: bool, backgrounds: Path | None, scenes: int | None,
               **options: Any) -> None:
        if not regions and (scenes is not None or backgrounds is not None):  # else ignored without a word
            raise CommandError(f"{'--scenes' if scenes is not None else '--backgrounds'} is an option of --regions: "
                               "add --regions to measure search by region")
        if json_path is not None and child_work_dir is None:  # before the run: its report must not be lost
            output_file_check("--json", json_path, "report.json")
        if regions:
            self._regions(data=data, backgrounds=backgrounds, scenes=scenes or DEFAULT_SCENES, seed=seed,
                          database=database, keep=keep,
                          batch_size=batch_size, json_path=json_path, write_docs=write_docs,
                          child_work_dir=child_work_dir)
            return
        if near_duplicates < 0:
            raise CommandError("--near-duplicates must be 0 or more")
        try:
            if child_work_dir is not None:
                self._run_here(data=data, captions=captions, near_duplicates=near_duplicates, seed=seed,
                               database=database, batch_size=batch_size, work_dir=child_work_dir)
                return
            report = evaluation_in_separate_database(
                database=database, data=data, captions=captions, near_duplicates=near_duplicates, seed=seed,
                batch_size=batch_size, keep=keep)
        except EvaluationError as exc:
            raise CommandError(str(exc)) from exc

        markdown = evaluation_markdown(report)
        self.stdout.write(markdown)
        if json_path is not None:
            json_path.write_text(report.to_json())
        for line in report.skipped[:20]:
            self.stdout.write(f"  skipped {line}")
        if len(report.skipped) > 20:
            self.stdout.write(f"  ... and {len(report.skipped) - 20} more skipped")
        loose = sorted(entry.name for entry in data.iterdir() if entry.is_file() and entry.name != "captions.tsv")
        if loose:  # a picture's category is its sub-folder: these have none
            more = f" and {len(loose) - 5} more" if len(loose) > 5 else ""
            self.stdout.write(f"  not used (not in a category sub-folder): {', '.join(loose[:5])}{more}")
        if keep:
            work_dir = evaluation_work_dir(database=database)
            # It has no accounts: browse it as a public gallery (this machine only, runserver's default).
            self.stdout.write(f"kept database {database!r}; to browse it: IMAGINAITION_DATABASE_NAME={database} "
                              f"IMAGINAITION_MEDIA_ROOT={work_dir / 'media'} "
                              f"IMAGINAITION_INDEX_DIR={work_dir / 'indexes'} IMAGINAITION_PUBLIC_GALLERY=1 "
                              "python manage.py runserver")
        if write_docs:

            command = f"python manage.py evaluate --data {data}"
            command += f" --captions {captions}" if captions else ""
            command += f" --near-duplicates {near_duplicates} --seed {seed}"
            write_section("Retrieval quality", command, markdown)
            self.stdout.write("written to docs/BENCHMARKS.md")

    def _run_here(self, *, data: Path, captions: Path | None, near_duplicates: int, seed: int, database: str,
                  batch_size: int | None, work_dir: Path) -> None:
        """In the child process, on the evaluation database: migrate, evaluate, leave report.json."""
        evaluation_database_in_use_check(database=database)
        call_command("migrate", verbosity=0)

        def bar(description: str, total: int) -> tqdm:
            return tqdm(total=total, desc=description, unit="image", disable=None)

        report = evaluation_run(data=data, captions=captions_read(captions) if captions else (),
                                near_duplicates=near_duplicates, seed=seed, work_dir=work_dir,
                                batch_size=batch_size, progress=bar)
        (work_dir / "report.json").write_text(report.to_json())

    def _regions(self, *, data: Path, backgrounds: Path | None, scenes: int, seed: int, database: str, keep: bool,
                 batch_size: int | None, json_path: Path | None, write_docs: bool,
                 child_work_dir: Path | None) -> None:
        if backgrounds is None:
            raise CommandError("--regions needs --backgrounds, a folder of photos")
        if not backgrounds.is_dir():
            what = "a file, not a folder" if backgrounds.exists() else "no such folder"
            raise CommandError(f"--backgrounds {backgrounds}: {what}")
        try:
            if child_work_dir is not None:
                evaluation_database_in_use_check(database=database)
                call_command("migrate", verbosity=0)

                def bar(description: str, total: int) -> tqdm:
                    return tqdm(total=total, desc=description, unit="item", disable=None)

                report = region_evaluation_run(objects=data, backgrounds=backgrounds, scenes=scenes, seed=seed,
                                               work_dir=child_work_dir, batch_size=batch_size, progress=bar)
                (child_work_dir / "report.json").write_text(report.to_json())
                return
            categories_of(data)  # fail early, before touching any database
            arguments = ["--regions", "--data", str(data.resolve()), "--backgrounds", str(backgrounds.resolve()),
                         "--scenes", str(scenes), "--seed", str(seed)]
            if batch_size is not None:
                arguments += ["--batch-size", str(batch_size)]
            report = RegionReport.from_json(evaluation_child_run(database=database, arguments=arguments, keep=keep))
        except EvaluationError as exc:
            raise CommandError(str(exc)) from exc
        markdown = region_markdown(report)
        self.stdout.write(markdown)
        if json_path is not None:
            json_path.write_text(report.to_json())
        if write_docs:
            write_section(f"Search by region ({report.region_style} regions)",
                          f"python manage.py evaluate --regions --data {data} --backgrounds {backgrounds} "
                          f"--scenes {scenes} --seed {seed}", markdown)
            self.stdout.write("written to docs/BENCHMARKS.md")
