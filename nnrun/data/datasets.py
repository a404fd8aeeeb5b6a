"""The public datasets nnrun can download: files, sizes, pinned SHA-256 and mirrors (a pure table).

Each ``data.source`` that names a public set (``mnist``, ``fashion-mnist``, ``cifar10``) has one
:class:`PublicSet`. A download is accepted only when its SHA-256 equals the pinned value, whatever
mirror served it, so a mirror only changes where the bytes come from, never which bytes are used.
Every value below says where it was published; the sizes let a message say how big a download is
before it starts.

Mirrors are base URLs: a file's URL is the base followed by the file's name. ``NNRUN_DATA_MIRROR``
(see :mod:`nnrun.data.download`) puts more bases first, laid out like the cache folder
(``<base>/<set>/<file>``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    """One file of a public set as its publishers distribute it."""

    name: str
    size: int     # bytes
    sha256: str   # hex digest of the file as downloaded (compressed)


@dataclass(frozen=True)
class PublicSet:
    """A downloadable data source.

    Attributes:
        name: the ``data.source`` it serves.
        title: how people call it.
        files: what is downloaded.
        mirrors: base URLs tried in order (each ends with ``/``).
        extract: for an archive, the folder it unpacks to next to it (the source reads that folder);
            None when the downloaded files are read as they are.
        extracted: the files that make the extracted folder complete.
    """

    name: str
    title: str
    files: tuple[RemoteFile, ...]
    mirrors: tuple[str, ...]
    extract: str | None = None
    extracted: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Bytes downloaded when nothing is cached."""
        return sum(f.size for f in self.files)


# MNIST: sizes and SHA-256 from TensorFlow Datasets' tensorflow_datasets/url_checksums/mnist.txt (the same
# four canonical .gz files LeCun et al. published; the sizes are the ones every downloader has printed
# since, e.g. TensorFlow's "Successfully downloaded train-images-idx3-ubyte.gz 9912422 bytes").
# Mirrors: torchvision's first (torchvision/datasets/mnist.py), then TensorFlow Datasets' (the URLs
# of that checksum file), then the original page.
MNIST = PublicSet(
    "mnist", "MNIST",
    (RemoteFile("train-images-idx3-ubyte.gz", 9912422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
     RemoteFile("train-labels-idx1-ubyte.gz", 28881,
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
     RemoteFile("t10k-images-idx3-ubyte.gz", 1648877,
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
     RemoteFile("t10k-labels-idx1-ubyte.gz", 4542,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")),
    ("https://ossci-datasets.s3.amazonaws.com/mnist/",
     "https://storage.googleapis.com/cvdf-datasets/mnist/",
     "https://yann.lecun.com/exdb/mnist/"))

# Fashion-MNIST: sizes and SHA-256 from TensorFlow Datasets' tensorflow_datasets/url_checksums/fashion_mnist.txt.
# Mirrors: Zalando Research's own bucket (the URLs of that file and of the dataset's README), then the
# same files in the dataset's repository (zalandoresearch/fashion-mnist, data/fashion/).
FASHION_MNIST = PublicSet(
    "fashion-mnist", "Fashion-MNIST",
    (RemoteFile("train-images-idx3-ubyte.gz", 26421880,
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
     RemoteFile("train-labels-idx1-ubyte.gz", 29515,
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
     RemoteFile("t10k-images-idx3-ubyte.gz", 4422102,
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
     RemoteFile("t10k-labels-idx1-ubyte.gz", 5148,
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")),
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
     "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"))

# CIFAR-10, "CIFAR-10 python version": SHA-256 as Keras pins it (keras/datasets/cifar10.py, `file_hash` of
# get_file for this URL), size 170,498,071 bytes as the CIFAR page's downloads report it (torchvision pins
# the same file by MD5 c58f30108f718f92721af3b95e74349a). TensorFlow Datasets pins the *binary* version,
# another file. One mirror: the authors' page.
CIFAR10 = PublicSet(
    "cifar10", "CIFAR-10",
    (RemoteFile("cifar-10-python.tar.gz", 170498071,
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
    ("https://www.cs.toronto.edu/~kriz/",),
    extract="cifar-10-batches-py",
    extracted=("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"))

DATASETS: dict[str, PublicSet] = {s.name: s for s in (MNIST, FASHION_MNIST, CIFAR10)}
"""The public sets by ``data.source``."""


def human_size(n: int) -> str:
    """Bytes for people: ``9.5 MiB``."""
    if n < 1024:
        return f"{n} B"
    units = ("KiB", "MiB", "GiB")
    size, unit = n / 1024, 0
    while size >= 1024 and unit < len(units) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size:.1f} {units[unit]}"
