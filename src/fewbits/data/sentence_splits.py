"""The recorded splits of the four rating sets of hutto_ICWSM_2014 (vaderSentiment 3.3.2's sdist).

Per set: the GroundTruth file's sha256, its number of items, and each split's number of items and the sha256
of its ids (one per line, file order, each line ending in a newline); see :mod:`fewbits.data.sentences` for
how the split is drawn. Written once from the real files; the loader checks them whenever it reads those files.
"""

RECORDED: dict[str, dict] = {
    "movies": {
        "file_sha256": "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
        "items": 10605,
        "splits": {
            "train": {"items": 9605, "sha256": "df4ea246e553767181f11170e4a6e0e74db3f91ac661834e7e24f4f7b62ef207"},
            "dev": {"items": 200, "sha256": "591b7277ab642b495acee0f2074cb5206c8bb3648d09a3709e58bd580ac99b01"},
            "test": {"items": 800, "sha256": "099e2b5f2a2aa644d261cfe1398b81098908fd03e95eaaf5d15cebcfb62183d6"},
        },
    },
    "tweets": {
        "file_sha256": "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
        "items": 4200,
        "splits": {
            "train": {"items": 3200, "sha256": "853bcaaefa0b5c889d8b4fbb8be8fa494fed5e5f3301487c2cbc772df0e958c8"},
            "dev": {"items": 200, "sha256": "7c6bd93bf96dbba8f4240f89037b17d6cfa9d53c76946cb4b35fd619d0776b50"},
            "test": {"items": 800, "sha256": "434ca1a218ca020aeea96193569c5dbab3ea6053e2987f6576d52e5e0a73a1b7"},
        },
    },
    "nyt": {
        "file_sha256": "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
        "items": 5190,
        "splits": {
            "train": {"items": 4171, "sha256": "ee9f8b0fb889e3d2ca8be00c76f3d7f6ddbf43918ba7a56507279bf67aad9a02"},
            "dev": {"items": 202, "sha256": "da7f67c0ff021f4089c8c2a04e755a41f13ec82b7a8c7cfadd35278f1562eb52"},
            "test": {"items": 817, "sha256": "35162b6df207124ec992d5da28298f1583b8e1067156b49c0a4c05b26194748e"},
        },
    },
    "amazon": {
        "file_sha256": "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
        "items": 3708,
        "splits": {
            "train": {"items": 2703, "sha256": "a0c474ae11aba6e04408156af7377de85c824e2051066efcfbd347e3b7fb54aa"},
            "dev": {"items": 201, "sha256": "8914f36ef527d71bd230af47a5523a0d5fea66390df9d060b7a4f353a5ec8519"},
            "test": {"items": 804, "sha256": "71ef921a66a8d7118ad529f76cb0654bee5ee698560b85d5c3d521033d59029f"},
        },
    },
}
