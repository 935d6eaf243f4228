"""Raw image sources (Tiny-ImageNet layout, ImageFolder layout): list (path, label) per split with one class mapping."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from fasttrain.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TINY_IMAGENET_DIRNAME = "tiny-imagenet-200"
# Where the val split comes from: "carve" holds out val_ratio of each class of the training images (the
# study's rule); "folder" takes an ImageFolder tree's own val/ folder.
VAL_SOURCES = ("carve", "folder")


class SourceLayoutError(UserError):
    """The source tree does not have the expected layout (missing file, empty class, unknown id)."""


@dataclass(frozen=True)
class SourceListing:
    """Everything prepare needs from a source: classes, labelled files, and a content fingerprint.

    `train` holds the source's training images (split into train/val when `val_source` is "carve");
    `val` holds the source's own val images when `val_source` is "folder" (else empty); `test` holds its
    labelled held-out images (Tiny-ImageNet's val/, ImageFolder's test/, or its val/ when that is not the
    val split), possibly empty. `test_from` / `val_from` name the folders they came from. Paths are strings
    under `root` (cheap for 100,000 files); lists are sorted so the same tree always gives the same order.
    """

    kind: str
    root: Path
    class_ids: list[str]
    class_names: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    test_from: str | None
    fingerprint: str
    val_source: str = "carve"
    val: list[tuple[str, int]] = field(default_factory=list)
    val_from: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def relative(self, path: str) -> str:
        """`path` relative to the source root, with forward slashes."""
        return Path(os.path.relpath(path, self.root)).as_posix()


def _image_files(folder: Path) -> list[str]:
    """Image files under `folder` (recursively) as path strings, sorted; other files are ignored."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(os.path.join(dirpath, name) for name in filenames if name.lower().endswith(IMAGE_EXTENSIONS))
    found.sort()
    return found


def _fingerprint(kind: str, root: Path, class_ids: list[str], splits: dict[str, list[tuple[str, int]]],
                 label_files: list[Path]) -> str:
    """Hash of what determines the cache content: relative paths, labels, file sizes, label-file bytes.

    Sizes rather than mtimes, so a copied tree (cp -r, rsync without -t) keeps its cache valid.
    """
    digest = hashlib.sha256()
    digest.update(f"{kind}\n{len(class_ids)}\n".encode())
    digest.update("\n".join(class_ids).encode())
    prefix = len(str(root)) + 1
    for split_name in sorted(splits):
        lines = [f"\n{split_name}\t{path[prefix:]}\t{label}\t{os.stat(path).st_size}"
                 for path, label in splits[split_name]]
        digest.update("".join(lines).encode())
    for label_file in label_files:
        if label_file.is_file():
            digest.update(b"\n" + label_file.relative_to(root).as_posix().encode() + b"\n")
            digest.update(label_file.read_bytes())
    return digest.hexdigest()


def _require_root(root: Path, what: str) -> Path:
    if not root.exists():
        raise SourceLayoutError(f"data root {root} does not exist; expected {what}")
    if not root.is_dir():
        raise SourceLayoutError(f"data root {root} is not a directory; expected {what}")
    return root


class TinyImageNetSource:
    """The tiny-imagenet-200 layout: wnids.txt, words.txt, train/<wnid>/images/*, val/images + val_annotations.txt.

    Class order is the order of wnids.txt, shared by every split. The official val/ set is the
    labelled `test` split; test/images has no labels and is not listed. `root` may be the
    extracted tiny-imagenet-200 directory itself or a folder that contains it.
    """

    kind = "tiny-imagenet"
    expected = "a Tiny-ImageNet tree (wnids.txt, train/<wnid>/images/, val/val_annotations.txt)"

    def __init__(self, root: str | os.PathLike):
        self.given_root = Path(root).absolute()

    def data_dir(self) -> Path:
        root = _require_root(self.given_root, self.expected)
        if (root / "wnids.txt").is_file():
            return root
        nested = root / TINY_IMAGENET_DIRNAME
        if (nested / "wnids.txt").is_file():
            return nested
        if (root / "train").is_dir() or (nested / "train").is_dir():
            where = root if (root / "train").is_dir() else nested
            raise SourceLayoutError(f"missing {where / 'wnids.txt'}: a Tiny-ImageNet tree lists its class ids "
                                    f"there, one per line")
        raise SourceLayoutError(f"{root} is not a Tiny-ImageNet tree: expected wnids.txt and train/ in it "
                                f"(or in {nested}); use --download to fetch it, or --source imagefolder "
                                f"for a train/<class>/ tree")

    def list(self, val_source: str = "carve") -> SourceListing:
        if val_source != "carve":
            raise UserError(f"val_source {val_source!r} is for ImageFolder trees; Tiny-ImageNet keeps the study's rule "
                            f"(val held out of train/, its labelled val/ is the test split): use val_source \"carve\"")
        root = self.data_dir()
        wnids_file = root / "wnids.txt"
        class_ids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
        if not class_ids:
            raise SourceLayoutError(f"{wnids_file} lists no class ids; expected one wnid per line")
        if len(set(class_ids)) != len(class_ids):
            duplicate = next(c for c in class_ids if class_ids.count(c) > 1)
            raise SourceLayoutError(f"{wnids_file} lists class id {duplicate!r} twice; each id must appear once")
        index = {wnid: i for i, wnid in enumerate(class_ids)}
        class_names = self._class_names(root / "words.txt", class_ids)

        train_dir = root / "train"
        if not train_dir.is_dir():
            raise SourceLayoutError(f"missing {train_dir}: expected train/<wnid>/images/ for each id in wnids.txt")
        stray = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and p.name not in index)
        if stray:
            raise SourceLayoutError(f"{train_dir / stray[0]} is a class folder whose id is not in {wnids_file}; "
                                    f"add it to wnids.txt or remove the folder")
        train: list[tuple[str, int]] = []
        for wnid, label in index.items():
            class_dir = train_dir / wnid / "images"
            if not class_dir.is_dir():
                raise SourceLayoutError(f"missing {class_dir}: wnids.txt lists {wnid} but it has no train "
                                        f"images folder")
            files = _image_files(class_dir)
            if not files:
                raise SourceLayoutError(f"empty class folder {class_dir}: expected image files "
                                        f"({', '.join(IMAGE_EXTENSIONS)})")
            train.extend((path, label) for path in files)

        annotations = root / "val" / "val_annotations.txt"
        test = self._val_annotations(annotations, index)
        fingerprint = _fingerprint(self.kind, root, class_ids, {"train": train, "test": test},
                                   [wnids_file, root / "words.txt", annotations])
        return SourceListing(self.kind, root, class_ids, class_names, train, test, "val", fingerprint)

    @staticmethod
    def _class_names(words_file: Path, class_ids: list[str]) -> list[str]:
        """Names from words.txt filtered to the listed ids; an id without a line keeps its id as name."""
        names: dict[str, str] = {}
        if words_file.is_file():
            wanted = set(class_ids)
            for line in words_file.read_text(errors="replace").splitlines():
                wnid, _, name = line.partition("\t")
                if wnid in wanted:
                    names[wnid] = name.strip()
        return [names.get(wnid) or wnid for wnid in class_ids]

    @staticmethod
    def _val_annotations(annotations: Path, index: dict[str, int]) -> list[tuple[str, int]]:
        if not annotations.is_file():
            raise SourceLayoutError(f"missing {annotations}: expected lines '<file>\\t<wnid>\\t...' that label "
                                    f"the images in {annotations.parent / 'images'}")
        images_dir = annotations.parent / "images"
        present = set(os.listdir(images_dir)) if images_dir.is_dir() else set()
        listed: list[tuple[str, int]] = []
        for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 2:
                raise SourceLayoutError(f"{annotations}:{line_no}: expected '<file>\\t<wnid>', got {line.strip()!r}")
            filename, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in index:
                raise SourceLayoutError(f"{annotations}:{line_no}: class id {wnid!r} is not in wnids.txt; "
                                        f"fix the annotation or add the id to wnids.txt")
            if filename not in present:
                raise SourceLayoutError(f"{annotations}:{line_no}: annotated image {images_dir / filename} "
                                        f"does not exist")
            listed.append((os.path.join(images_dir, filename), index[wnid]))
        listed.sort()
        return listed


class ImageFolderSource:
    """The ImageFolder layout: train/<class>/* required; optional val/<class>/* and test/<class>/*.

    With val_source "carve" (the study's rule) val is held out of train/ and the labelled test split is
    test/ (else val/); with "folder" val/ is the val split and test/ (if present) the test split.
    Classes are the train/ sub-folders sorted by name; image files are .jpg .jpeg .png .bmp .webp
    (any case, searched recursively), other files are ignored.
    """

    kind = "imagefolder"
    expected = "an ImageFolder tree (train/<class>/ image files, optional test/<class>/ or val/<class>/)"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()

    def list(self, val_source: str = "carve") -> SourceListing:
        root = _require_root(self.root, self.expected)
        train_dir = root / "train"
        if not train_dir.is_dir():
            raise SourceLayoutError(f"{root} is not an ImageFolder tree: expected {train_dir} with one "
                                    f"sub-folder of images per class")
        class_ids = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_ids:
            raise SourceLayoutError(f"{train_dir} has no class folders: expected train/<class>/ image files")
        index = {name: i for i, name in enumerate(class_ids)}
        train = self._labelled_files(train_dir, index, require_every_class=True)

        if val_source == "folder":
            if not (root / "val").is_dir():
                raise SourceLayoutError(f"val_source \"folder\" needs {root / 'val'} with val/<class>/ image files; "
                                        f"add it, or set val_source \"carve\" to hold out val_ratio of train/")
            val = self._labelled_files(root / "val", index, require_every_class=False)
            if not val:
                raise SourceLayoutError(f"{root / 'val'} holds no image files in class folders (val/<class>/*); "
                                        f"add them, or set val_source \"carve\" to hold out val_ratio of train/")
            val_from, test_from = "val", ("test" if (root / "test").is_dir() else None)
        else:
            val, val_from = [], None
            test_from = next((name for name in ("test", "val") if (root / name).is_dir()), None)
        test = self._labelled_files(root / test_from, index, require_every_class=False) if test_from else []
        # "carve" keeps the fingerprint of earlier versions (no val entry), so their caches stay valid
        lists = {"train": train, "test": test, **({"val": val} if val_source == "folder" else {})}
        fingerprint = _fingerprint(self.kind, root, class_ids, lists, [])
        return SourceListing(self.kind, root, class_ids, list(class_ids), train, test, test_from, fingerprint,
                             val_source, val, val_from)

    @staticmethod
    def _labelled_files(split_dir: Path, index: dict[str, int], *, require_every_class: bool) -> list[tuple[str, int]]:
        listed: list[tuple[str, int]] = []
        folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        for folder in folders:
            if folder.name not in index:
                raise SourceLayoutError(f"{folder} is a class that train/ does not have; every class in "
                                        f"{split_dir.name}/ needs a train/{folder.name}/ folder")
            files = _image_files(folder)
            if not files and require_every_class:
                raise SourceLayoutError(f"empty class folder {folder}: expected image files "
                                        f"({', '.join(IMAGE_EXTENSIONS)})")
            listed.extend((path, index[folder.name]) for path in files)
        return listed


SOURCES = {TinyImageNetSource.kind: TinyImageNetSource, ImageFolderSource.kind: ImageFolderSource}


def open_source(kind: str, root: str | os.PathLike) -> TinyImageNetSource | ImageFolderSource:
    """The source class for `kind` ("tiny-imagenet" or "imagefolder") rooted at `root`."""
    if kind not in SOURCES:
        raise UserError(f"unknown data source {kind!r}; choose one of: {', '.join(SOURCES)}")
    return SOURCES[kind](root)
