package protocol

import (
	"cmp"
	"slices"
)

// The reference prints every JSON object from a QDict, whose iteration order is that of its
// hash table: buckets in ascending order (tdb_hash(key) % 512), and within a bucket the most
// recently inserted member first. That order is a pure function of the keys (and, for the rare
// keys that share a bucket, of insertion order), so replies can match the reference's bytes:
// {"return": {}, "id": 1} but {"id": 1, "error": {...}}, and {"class": ..., "desc": ...}.

// qdictBuckets is QDICT_BUCKET_MAX.
const qdictBuckets = 512

// qdictBucket is tdb_hash(key) % QDICT_BUCKET_MAX from qobject/qdict.c. The key is the C
// string, so it ends at a NUL byte.
func qdictBucket(key string) uint32 {
	n := len(key)
	for i := 0; i < len(key); i++ {
		if key[i] == 0 {
			n = i
			break
		}
	}
	v := uint32(0x238F13AF) * uint32(n)
	for i := 0; i < n; i++ {
		v += uint32(key[i]) << (uint(i) * 5 % 24)
	}
	return (1103515243*v + 12345) % qdictBuckets
}

// sortQDictKeys orders the keys of a map as a QDict would print them. Go maps have no
// insertion order, so keys that share a bucket are ordered by key.
func sortQDictKeys(keys []string) {
	type kb struct {
		k string
		b uint32
	}
	if len(keys) < 2 {
		return
	}
	tmp := make([]kb, len(keys))
	for i, k := range keys {
		tmp[i] = kb{k, qdictBucket(k)}
	}
	slices.SortFunc(tmp, func(x, y kb) int {
		if c := cmp.Compare(x.b, y.b); c != 0 {
			return c
		}
		return cmp.Compare(x.k, y.k)
	})
	for i := range tmp {
		keys[i] = tmp[i].k
	}
}
