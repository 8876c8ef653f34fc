package dispatch

import "sort"

// When a request has several faults, the reference reports the first one it meets, and it
// meets object members in the iteration order of two hash tables: QEMU's QDict (for the
// request object itself) and GLib's GHashTable (for the members of an argument object left
// over after the schema's members were taken out). This file reproduces both orders so that
// "Parameter 'x' is unexpected" names the same member the reference names.

// qdictBuckets is QDICT_BUCKET_MAX in QEMU's qobject/qdict.c.
const qdictBuckets = 512

// tdbHash is the hash QDict uses (qdict.c tdb_hash).
func tdbHash(key string) uint32 {
	v := uint32(0x238F13AF) * uint32(len(key))
	for i := 0; i < len(key); i++ {
		v += uint32(key[i]) << (uint(i) * 5 % 24)
	}
	return 1103515243*v + 12345
}

// qdictOrder returns the keys of m in the order qdict_first/qdict_next visit them: by bucket.
// Within one bucket the reference puts the key inserted last first; the decoded map has lost
// the insertion order, so such (rare) ties are broken by name.
func qdictOrder[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		bi, bj := tdbHash(keys[i])%qdictBuckets, tdbHash(keys[j])%qdictBuckets
		if bi != bj {
			return bi < bj
		}
		return keys[i] < keys[j]
	})
	return keys
}

// gStrHash is GLib's g_str_hash (djb2 over signed chars).
func gStrHash(key string) uint32 {
	h := uint32(5381)
	for i := 0; i < len(key); i++ {
		h = h<<5 + h + uint32(int32(int8(key[i])))
	}
	return h
}

// primeMod is GLib's prime_mod table, indexed by the table's shift.
var primeMod = [...]uint32{1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191,
	16381, 32749, 65521, 131071, 262139, 524287, 1048573, 2097143, 4194301, 8388593,
	16777213, 33554393, 67108859, 134217689, 268435399, 536870909, 1073741789, 2147483647}

const (
	ghashUnused    = 0
	ghashTombstone = 1
	ghashMinShift  = 3
)

// ghashSet models the slot layout of a GHashTable of string keys (GLib 2.74, bookworm's): open
// addressing with quadratic probing, tombstones, and the in-place rehash of
// g_hash_table_resize. Only positions matter here, so it keeps hashes and keys.
type ghashSet struct {
	hashes    []uint32
	keys      []string
	mod, mask uint32
	nnodes    int
	noccupied int
}

func newGHashSet() *ghashSet {
	t := &ghashSet{}
	t.setShift(ghashMinShift)
	t.hashes = make([]uint32, 1<<ghashMinShift)
	t.keys = make([]string, 1<<ghashMinShift)
	return t
}

func (t *ghashSet) setShift(shift int) {
	t.mod = primeMod[shift]
	t.mask = 1<<shift - 1
}

func (t *ghashSet) hashToIndex(h uint32) uint32 { return (h * 11) % t.mod }

func realHash(h uint32) bool { return h >= 2 }

func keyHash(key string) uint32 {
	h := gStrHash(key)
	if !realHash(h) {
		h = 2
	}
	return h
}

// lookup returns the slot of key, or the slot an insert would use (the first tombstone met,
// else the unused slot that ended the probe).
func (t *ghashSet) lookup(key string) (idx uint32, found bool) {
	h := keyHash(key)
	idx = t.hashToIndex(h)
	step := uint32(0)
	tomb, haveTomb := uint32(0), false
	for t.hashes[idx] != ghashUnused {
		if t.hashes[idx] == h && t.keys[idx] == key {
			return idx, true
		}
		if t.hashes[idx] == ghashTombstone && !haveTomb {
			tomb, haveTomb = idx, true
		}
		step++
		idx = (idx + step) & t.mask
	}
	if haveTomb {
		return tomb, false
	}
	return idx, false
}

func (t *ghashSet) insert(key string) {
	idx, found := t.lookup(key)
	if found {
		return
	}
	old := t.hashes[idx]
	t.hashes[idx] = keyHash(key)
	t.keys[idx] = key
	t.nnodes++
	if old == ghashUnused {
		t.noccupied++
		t.maybeResize()
	}
}

func (t *ghashSet) remove(key string) {
	idx, found := t.lookup(key)
	if !found {
		return
	}
	t.hashes[idx] = ghashTombstone
	t.keys[idx] = ""
	t.nnodes--
	t.maybeResize()
}

func (t *ghashSet) maybeResize() {
	size := len(t.hashes)
	if (size > t.nnodes*4 && size > 1<<ghashMinShift) || size <= t.noccupied+t.noccupied/16 {
		t.resize()
	}
}

func (t *ghashSet) resize() {
	oldSize := len(t.hashes)
	// g_hash_table_set_shift_from_size(nnodes * 1.333), truncated to an int as in C.
	n := int(float64(t.nnodes) * 1.333)
	shift := 0
	for ; n > 0; shift++ {
		n >>= 1
	}
	if shift < ghashMinShift {
		shift = ghashMinShift
	}
	t.setShift(shift)
	newSize := 1 << shift
	bitmapSize := oldSize
	if newSize > oldSize {
		t.hashes = append(t.hashes, make([]uint32, newSize-oldSize)...)
		t.keys = append(t.keys, make([]string, newSize-oldSize)...)
		bitmapSize = newSize
	}
	moved := make([]bool, bitmapSize)
	// resize_map: every live entry moves to its slot in the new geometry, evicting (and then
	// re-placing) whatever not-yet-moved entry sits there.
	for i := 0; i < oldSize; i++ {
		h := t.hashes[i]
		if !realHash(h) {
			t.hashes[i] = ghashUnused
			continue
		}
		if moved[i] {
			continue
		}
		t.hashes[i] = ghashUnused
		key := t.keys[i]
		t.keys[i] = ""
		for {
			idx := t.hashToIndex(h)
			step := uint32(0)
			for moved[idx] {
				step++
				idx = (idx + step) & t.mask
			}
			moved[idx] = true
			replaced, replacedKey := t.hashes[idx], t.keys[idx]
			t.hashes[idx], t.keys[idx] = h, key
			if !realHash(replaced) {
				break
			}
			h, key = replaced, replacedKey
		}
	}
	if newSize < oldSize {
		t.hashes = t.hashes[:newSize]
		t.keys = t.keys[:newSize]
	}
	t.noccupied = t.nnodes
}

// first returns the key in the lowest live slot: what g_hash_table_iter_next yields first.
func (t *ghashSet) first() (string, bool) {
	for i, h := range t.hashes {
		if realHash(h) {
			return t.keys[i], true
		}
	}
	return "", false
}

// firstUnexpected returns the member the reference names in "Parameter '%s' is unexpected":
// the keys of obj go into a GHashTable in QDict order, the schema members that were present
// are taken out in schema order, and the first slot left wins.
func firstUnexpected(obj map[string]any, consumed []string) (string, bool) {
	if len(obj) <= len(consumed) {
		return "", false
	}
	t := newGHashSet()
	for _, k := range qdictOrder(obj) {
		t.insert(k)
	}
	for _, k := range consumed {
		t.remove(k)
	}
	return t.first()
}
