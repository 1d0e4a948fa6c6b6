"""Corpora: discover speaker folders, download VCC 2016, render the offline demo corpus.

- :mod:`.corpus`: list a speaker's audio files, utterance ids, the paper's split, parallel pairs.
- :mod:`.download`: the VCC 2016 downloader (resumable, checked, atomic extraction).
- :mod:`.demo_corpus`: a two-speaker corpus synthesised with flite, laid out like VCC 2016.
"""

from .corpus import list_audio_files, match_parallel, paper_split, utterance_id
from .demo_corpus import DemoCorpusError, flite_voices, load_sentences, make_demo_corpus
from .download import DEFAULT_BASE_URL, DownloadError, download_file, download_vcc2016

__all__ = [
    "DEFAULT_BASE_URL",
    "DemoCorpusError",
    "DownloadError",
    "download_file",
    "download_vcc2016",
    "flite_voices",
    "list_audio_files",
    "load_sentences",
    "make_demo_corpus",
    "match_parallel",
    "paper_split",
    "utterance_id",
]
