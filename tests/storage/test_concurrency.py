import threading

from store_workers import put_variant, run_together

from storage import open_store

FP = "fp-conc"


def test_threads_publish_same_key(store_url):
    store = open_store(store_url, fingerprint=FP)
    errors: list[BaseException] = []
    payloads = [b"same"] * 4 + [b"variant-%d" % i for i in range(4)]
    start = threading.Barrier(len(payloads))

    def worker(data: bytes) -> None:
        try:
            start.wait()
            for _ in range(3):
                store.put("fx", "k", data)
        except BaseException as e:  # noqa: BLE001 - a thread hands every failure to the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(store.get_variants("fx", "k")) == sorted(set(payloads))
    assert store.stats.puts == 3 * len(payloads) and store.stats.quarantined == 0


def test_processes_publish_same_key(store_url):
    datas = [b"identical"] * 2 + [b"another"]
    results = run_together(put_variant, [(store_url, FP, d) for d in datas])
    for variants in results:  # every writer saw at least its own variant, whole
        assert set(variants) <= {b"identical", b"another"}
    final = open_store(store_url, fingerprint=FP)
    assert sorted(final.get_variants("fx", "shared-key")) == [b"another", b"identical"]
    assert final.stats.quarantined == 0
