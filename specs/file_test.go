package specs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/qga"
	"github.com/qgakit/qgakit/harness/vm"
)

// The guest-file-* commands hand the host raw file access in the guest, so every claim the
// agent makes about a file (what it wrote, what it read, where it seeked) is checked against
// the console shell, which reads and writes the same files without the agent: od and
// sha256sum see what reached the file, printf and dd put there what the agent must read.

// gfDir is the guest directory these specs work in (tmpfs).
const gfDir = "/tmp/qgakit-file"

// gfModes are every mode string the reference accepts (guest_file_open_modes).
var gfModes = []string{"r", "rb", "r+", "rb+", "r+b", "w", "wb", "w+", "wb+", "w+b", "a", "ab", "a+", "ab+", "a+b"}

// One guest for all: the specs use files of their own. ContinueOnFailure, because a failure
// leaves nothing the next spec depends on, and a report of every failing case says more about
// an agent than the first one alone.
var _ = Describe("guest-file-*", Ordered, ContinueOnFailure, func() {
	var guest *vm.VM
	BeforeAll(func(ctx SpecContext) {
		guest = bootGuest(ctx)
		_, err := guest.Console().RunOK(ctx, "mkdir -p "+gfDir)
		Expect(err).NotTo(HaveOccurred())
	}, NodeTimeout(bootTimeout))

	// seed is what the console puts in a file before the agent opens it: every byte value, so
	// that a base64 or encoding slip in either direction shows, then a line of text.
	seed := append(gfAllBytes(), "console seed\n"...)
	// written is what the agent writes: shorter than seed, so an overwrite in place (r+) and an
	// append give different files.
	written := append(bytes.Repeat([]byte{0xff, 0x00, 0x80}, 20), "agt\n"...)

	DescribeTable("each open mode reads and writes the file the console sees", gfModeEntries(
		func(ctx SpecContext, mode string) {
			agent := guest.Agent()
			m := gfParseMode(mode)
			path := gfDir + "/mode-" + strings.ReplaceAll(mode, "+", "plus")

			By("the console writes the seed file, all 256 byte values, with permissions 0640")
			gfConsoleWrite(ctx, guest, path, seed, "640")

			By("guest-file-open " + mode)
			h := gfOpen(ctx, agent, path, mode)

			By("the console sees the file truncated by the open exactly for the w modes, its permissions untouched")
			want := seed
			if m.truncate {
				want = nil
			}
			data, perm := gfConsoleRead(ctx, guest, path)
			Expect(data).To(Equal(want))
			Expect(perm).To(Equal("640"), "an existing file keeps its mode")

			if m.read {
				By("reading through the agent gives the bytes the console wrote, with eof since 4096 > size")
				r := gfRead(ctx, agent, h, 4096)
				Expect(r.data).To(Equal(want))
				Expect(r.EOF).To(BeTrue())
			} else {
				By("reading a write-only handle fails as read(2) does there")
				err := agent.Call(ctx, "guest-file-read", map[string]any{"handle": h}, nil)
				Expect(err).To(MatchAgentError("GenericError", "failed to read file: Bad file descriptor"))
			}

			By("seeking to 0: the write lands there for r+ and w modes, at the end for a modes")
			Expect(gfSeek(ctx, agent, h, 0, "set")).To(Equal(gfSeekReply{Position: 0}))
			if m.write {
				w := gfWrite(ctx, agent, h, written)
				Expect(w).To(Equal(gfWriteReply{Count: int64(len(written))}))
				switch {
				case m.append:
					want = append(append([]byte(nil), want...), written...)
				case m.truncate:
					want = written
				default: // r+: in place, the rest of the seed stays
					want = append(append([]byte(nil), written...), seed[len(written):]...)
				}
				By("the position after the write is where the bytes went, as guest-file-seek cur 0 reports")
				pos := int64(len(written))
				if m.append {
					pos = int64(len(want))
				}
				Expect(gfSeek(ctx, agent, h, 0, "cur")).To(Equal(gfSeekReply{Position: pos}))
			} else {
				By("writing a read-only handle fails as write(2) does there")
				err := agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64(written)}, nil)
				Expect(err).To(MatchAgentError("GenericError", "failed to write to file: Bad file descriptor"))
			}
			Expect(agent.Call(ctx, "guest-file-flush", map[string]any{"handle": h}, nil)).To(Succeed())

			By("after guest-file-flush, with the handle still open, the console sees exactly the expected bytes")
			data, _ = gfConsoleRead(ctx, guest, path)
			Expect(data).To(Equal(want))

			if m.read {
				By("at the end a read meets eof; the console appends to the open file, and the next read returns that: nothing is cached and eof does not stick")
				Expect(gfSeek(ctx, agent, h, 0, "end")).To(Equal(gfSeekReply{Position: int64(len(want))}))
				r := gfRead(ctx, agent, h, 4096)
				Expect(r.Count).To(BeZero())
				Expect(r.EOF).To(BeTrue())
				tail := []byte("appended by the console\n")
				_, err := guest.Console().RunOK(ctx, "printf '"+gfOctal(tail)+"' >> "+path)
				Expect(err).NotTo(HaveOccurred())
				r = gfRead(ctx, agent, h, 4096)
				Expect(r.data).To(Equal(tail))
				Expect(r.EOF).To(BeTrue())
				want = append(append([]byte(nil), want...), tail...)

				By("from position 0 the agent reads the whole file as the console has it")
				Expect(gfSeek(ctx, agent, h, 0, "set")).To(Equal(gfSeekReply{Position: 0}))
				r = gfRead(ctx, agent, h, 4096)
				Expect(r.data).To(Equal(want))
				Expect(r.EOF).To(BeTrue())
			}

			gfClose(ctx, agent, h)
			By("after guest-file-close the console sees the same bytes and mode, and the handle is gone")
			data, perm = gfConsoleRead(ctx, guest, path)
			Expect(data).To(Equal(want))
			Expect(perm).To(Equal("640"))
			err := agent.Call(ctx, "guest-file-close", map[string]any{"handle": h}, nil)
			Expect(err).To(MatchAgentError("GenericError", fmt.Sprintf("handle '%d' has not been found", h)))
		},
		func(mode string) string { return "mode " + mode },
	)...)

	It("creates a missing file with permissions 0666 exactly for the w and a modes",
		cmdLabel("guest-file-open", "guest-file-close"), func(ctx SpecContext) {
			agent := guest.Agent()
			By("the console reads the agent's umask: not 0, so 0666 can only come from the agent setting it")
			pids := gfAgentPids(ctx, guest)
			Expect(pids).To(HaveLen(1))
			out, err := guest.Console().RunOK(ctx, "sed -n 's/^Umask:[[:space:]]*//p' /proc/"+pids[0]+"/status")
			Expect(err).NotTo(HaveOccurred())
			Expect(strings.TrimSpace(out)).To(Equal("0022"))

			for _, mode := range gfModes {
				path := gfDir + "/new-" + strings.ReplaceAll(mode, "+", "plus")
				if gfParseMode(mode).create {
					By("guest-file-open " + mode + " of a missing file: the console sees it empty with mode 0666")
					h := gfOpen(ctx, agent, path, mode)
					data, perm := gfConsoleRead(ctx, guest, path)
					Expect(data).To(BeEmpty())
					Expect(perm).To(Equal("666"))
					gfClose(ctx, agent, h)
					continue
				}
				By("guest-file-open " + mode + " of a missing file fails with ENOENT and the console finds no file")
				err := agent.Call(ctx, "guest-file-open", map[string]any{"path": path, "mode": mode}, nil)
				Expect(err).To(MatchAgentError("GenericError",
					fmt.Sprintf("failed to open file '%s' (mode: '%s'): No such file or directory", path, mode)))
				Expect(gfConsoleExists(ctx, guest, path)).To(BeFalse())
			}

			By("the mode defaults to r: a missing file is not created")
			path := gfDir + "/new-default"
			err = agent.Call(ctx, "guest-file-open", map[string]any{"path": path}, nil)
			Expect(err).To(MatchAgentError("GenericError",
				fmt.Sprintf("failed to open file '%s' (mode: 'r'): No such file or directory", path)))
			Expect(gfConsoleExists(ctx, guest, path)).To(BeFalse())

			By("without a mode an existing file opens read-only: its bytes come back and a write fails")
			gfConsoleWrite(ctx, guest, path, seed, "644")
			h := gfOpen(ctx, agent, path, "")
			Expect(gfRead(ctx, agent, h, 4096).data).To(Equal(seed))
			err = agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64(written)}, nil)
			Expect(err).To(MatchAgentError("GenericError", "failed to write to file: Bad file descriptor"))
			gfClose(ctx, agent, h)
		}, NodeTimeout(3*time.Minute))

	It("reads a file of several MiB in chunks with exact eof flags, and seeks with every whence",
		cmdLabel("guest-file-open", "guest-file-read", "guest-file-seek", "guest-file-write", "guest-file-close"),
		func(ctx SpecContext) {
			agent := guest.Agent()
			path := gfDir + "/big"
			const chunk = 1 << 20
			const tailLen = 12345
			size := int64(6*chunk + tailLen)

			By("the console fills a file with 6 MiB + 12345 random bytes and reports its size and sha256")
			_, err := guest.Console().RunOK(ctx, fmt.Sprintf(
				"dd if=/dev/urandom of=%[1]s bs=%[2]d count=6 2>/dev/null && dd if=/dev/urandom bs=%[3]d count=1 2>/dev/null >> %[1]s",
				path, chunk, tailLen))
			Expect(err).NotTo(HaveOccurred())
			Expect(gfConsoleSize(ctx, guest, path)).To(Equal(size))
			wantSum := consoleSHA256(ctx, guest, path)

			By("reading 1 MiB at a time: full chunks without eof, the short last one with eof, then an empty read with eof")
			h := gfOpen(ctx, agent, path, "r")
			var data []byte
			for i := range 6 {
				r := gfRead(ctx, agent, h, chunk)
				Expect(r.Count).To(Equal(int64(chunk)), "chunk %d", i)
				Expect(r.EOF).To(BeFalse(), "chunk %d ends before the end of the file", i)
				data = append(data, r.data...)
			}
			r := gfRead(ctx, agent, h, chunk)
			Expect(r.Count).To(Equal(int64(tailLen)))
			Expect(r.EOF).To(BeTrue())
			data = append(data, r.data...)
			r = gfRead(ctx, agent, h, chunk)
			Expect(r.Count).To(BeZero())
			Expect(r.EOF).To(BeTrue())
			Expect(r.BufB64).To(BeEmpty())

			By("the chunks put together have the sha256 the console computed")
			Expect(gfSHA256(data)).To(Equal(wantSum))
			// From here data is the file as the console sees it, so every later read is checked
			// against it.

			expectAt := func(pos int64, count int, wantEOF bool) {
				GinkgoHelper()
				r := gfRead(ctx, agent, h, int64(count))
				end := min(pos+int64(count), size)
				Expect(r.data).To(Equal(data[pos:end]), "bytes at %d", pos)
				Expect(r.EOF).To(Equal(wantEOF), "eof after reading %d at %d", count, pos)
			}
			off := 3*chunk + rand.Int64N(chunk)
			steps := []struct {
				offset int64
				whence any
				pos    int64
			}{
				{off, "set", off},
				{1000, "cur", off + 4096 + 1000},
				{-5000, "cur", off + 4096 + 1000 + 4096 - 5000},
				{-100, "end", size - 100},
				{17, 0, 17},
				{chunk, 1, 17 + 4096 + chunk},
				{-4096, 2, size - 4096},
				{0, "set", 0},
			}
			for _, s := range steps {
				By(fmt.Sprintf("seek %d from %v: position %d, then 4096 bytes equal to the file's there", s.offset, s.whence, s.pos))
				Expect(gfSeek(ctx, agent, h, s.offset, s.whence)).To(Equal(gfSeekReply{Position: s.pos}))
				n := 4096
				expectAt(s.pos, n, s.pos+int64(n) > size)
			}

			By("reading exactly up to the end gives no eof; only the next read meets it")
			Expect(gfSeek(ctx, agent, h, -4096, "end")).To(Equal(gfSeekReply{Position: size - 4096}))
			expectAt(size-4096, 4096, false)
			expectAt(size, 4096, true)

			By("guest-file-read without count reads 4096 bytes")
			Expect(gfSeek(ctx, agent, h, 0, "set")).To(Equal(gfSeekReply{Position: 0}))
			var def gfReadReply
			Expect(agent.Call(ctx, "guest-file-read", map[string]any{"handle": h}, &def)).To(Succeed())
			Expect(gfUnB64(def.BufB64)).To(Equal(data[:4096]))
			Expect(def).To(HaveField("Count", int64(4096)))

			By("a seek past the end is allowed, reads nothing with eof, and does not grow the file")
			Expect(gfSeek(ctx, agent, h, size+1000, "set")).To(Equal(gfSeekReply{Position: size + 1000}))
			expectAt(size, 4096, true)
			Expect(gfConsoleSize(ctx, guest, path)).To(Equal(size))

			By("a seek before the start fails with EINVAL and leaves the position where it was")
			Expect(gfSeek(ctx, agent, h, 5, "set")).To(Equal(gfSeekReply{Position: 5}))
			err = agent.Call(ctx, "guest-file-seek", map[string]any{"handle": h, "offset": -6, "whence": "cur"}, nil)
			Expect(err).To(MatchAgentError("GenericError", "failed to seek file: Invalid argument"))
			Expect(gfSeek(ctx, agent, h, 0, "cur")).To(Equal(gfSeekReply{Position: 5}))
			gfClose(ctx, agent, h)

			By("r+: a write 4096 bytes past the end leaves a hole of zeros, as the console's sha256 shows")
			h = gfOpen(ctx, agent, path, "r+")
			Expect(gfSeek(ctx, agent, h, 4096, "end")).To(Equal(gfSeekReply{Position: size + 4096}))
			Expect(gfWrite(ctx, agent, h, []byte("XYZ"))).To(Equal(gfWriteReply{Count: 3}))
			gfClose(ctx, agent, h)
			grown := append(append(append([]byte(nil), data...), make([]byte, 4096)...), "XYZ"...)
			Expect(gfConsoleSize(ctx, guest, path)).To(Equal(int64(len(grown))))
			Expect(consoleSHA256(ctx, guest, path)).To(Equal(gfSHA256(grown)))

			By("writing the same 6 MiB back through the agent in 1 MiB requests: the console's sha256 of the copy matches")
			cp := gfDir + "/big-copy"
			h = gfOpen(ctx, agent, cp, "w")
			for off := 0; off < len(data); off += chunk {
				piece := data[off:min(off+chunk, len(data))]
				Expect(gfWrite(ctx, agent, h, piece)).To(Equal(gfWriteReply{Count: int64(len(piece))}))
			}
			gfClose(ctx, agent, h)
			Expect(gfConsoleSize(ctx, guest, cp)).To(Equal(size))
			Expect(consoleSHA256(ctx, guest, cp)).To(Equal(wantSum))
		}, NodeTimeout(5*time.Minute))

	It("makes written data visible to the console at guest-file-flush, before close",
		cmdLabel("guest-file-open", "guest-file-write", "guest-file-flush", "guest-file-close"),
		func(ctx SpecContext) {
			agent := guest.Agent()
			path := gfDir + "/flush"
			// Small writes: the reference keeps them in its stdio buffer until a flush, so a
			// flush that does nothing leaves the console an empty file.
			first, second := []byte("first write\n"), []byte("second\x00write\n")
			h := gfOpen(ctx, agent, path, "w")
			Expect(gfWrite(ctx, agent, h, first)).To(Equal(gfWriteReply{Count: int64(len(first))}))
			Expect(agent.Call(ctx, "guest-file-flush", map[string]any{"handle": h}, nil)).To(Succeed())
			By("after the first flush the console sees the first write")
			data, _ := gfConsoleRead(ctx, guest, path)
			Expect(data).To(Equal(first))

			Expect(gfWrite(ctx, agent, h, second)).To(Equal(gfWriteReply{Count: int64(len(second))}))
			Expect(agent.Call(ctx, "guest-file-flush", map[string]any{"handle": h}, nil)).To(Succeed())
			By("after the second flush the console sees both, the handle still open")
			data, _ = gfConsoleRead(ctx, guest, path)
			Expect(data).To(Equal(append(append([]byte(nil), first...), second...)))
			By("the console lists the file among the agent's open files, so the flush did not close it")
			Expect(gfAgentOpenFiles(ctx, guest)).To(ContainElement(path))

			gfClose(ctx, agent, h)
			Expect(gfAgentOpenFiles(ctx, guest)).NotTo(ContainElement(path))
			data, _ = gfConsoleRead(ctx, guest, path)
			Expect(data).To(Equal(append(append([]byte(nil), first...), second...)))
		}, NodeTimeout(2*time.Minute))

	It("refuses unknown handles, bad modes, missing files, invalid base64 and counts out of range, changing nothing",
		cmdLabel("guest-file-open", "guest-file-read", "guest-file-write", "guest-file-seek", "guest-file-flush", "guest-file-close"),
		func(ctx SpecContext) {
			agent := guest.Agent()
			path := gfDir + "/errors"
			gfConsoleWrite(ctx, guest, path, seed, "644")

			h := gfOpen(ctx, agent, path, "r+")
			closed := gfOpen(ctx, agent, path, "r")
			gfClose(ctx, agent, closed)

			By("every handle command refuses a handle never issued, a closed one, and a negative one")
			for _, bad := range []int64{999, closed, -1, h + 1000} {
				notFound := MatchAgentError("GenericError", fmt.Sprintf("handle '%d' has not been found", bad))
				Expect(agent.Call(ctx, "guest-file-read", map[string]any{"handle": bad}, nil)).To(notFound)
				Expect(agent.Call(ctx, "guest-file-write", map[string]any{"handle": bad, "buf-b64": gfB64(written)}, nil)).To(notFound)
				Expect(agent.Call(ctx, "guest-file-seek", map[string]any{"handle": bad, "offset": 0, "whence": "set"}, nil)).To(notFound)
				Expect(agent.Call(ctx, "guest-file-flush", map[string]any{"handle": bad}, nil)).To(notFound)
				Expect(agent.Call(ctx, "guest-file-close", map[string]any{"handle": bad}, nil)).To(notFound)
			}
			By("the handle lookup comes before the argument checks: an unknown handle with a bad count or bad base64 is not found")
			Expect(agent.Call(ctx, "guest-file-read", map[string]any{"handle": closed, "count": -1}, nil)).
				To(MatchAgentError("GenericError", fmt.Sprintf("handle '%d' has not been found", closed)))
			Expect(agent.Call(ctx, "guest-file-write", map[string]any{"handle": closed, "buf-b64": "!"}, nil)).
				To(MatchAgentError("GenericError", fmt.Sprintf("handle '%d' has not been found", closed)))

			By("bad modes are refused with the reference's text, and the console finds no file created")
			// An absent mode means r, but an empty string is a mode, and not a valid one.
			for _, mode := range []string{"", "x", "rw", "R", "w+x", "rb+b", "wr", "a++", " r", "r\n"} {
				p := gfDir + "/badmode"
				err := agent.Call(ctx, "guest-file-open", map[string]any{"path": p, "mode": mode}, nil)
				Expect(err).To(MatchAgentError("GenericError", fmt.Sprintf("invalid file open mode '%s'", mode)), "mode %q", mode)
				Expect(gfConsoleExists(ctx, guest, p)).To(BeFalse(), "mode %q", mode)
			}

			By("a missing file, a missing directory and a directory opened for writing fail with strerror's text")
			for _, c := range []struct{ path, mode, why string }{
				{gfDir + "/missing", "r", "No such file or directory"},
				{gfDir + "/no-dir/file", "w", "No such file or directory"},
				{gfDir, "w", "Is a directory"},
				{gfDir + "/errors/below-a-file", "a", "Not a directory"},
			} {
				err := agent.Call(ctx, "guest-file-open", map[string]any{"path": c.path, "mode": c.mode}, nil)
				Expect(err).To(MatchAgentError("GenericError",
					fmt.Sprintf("failed to open file '%s' (mode: '%s'): %s", c.path, c.mode, c.why)))
			}
			Expect(gfConsoleExists(ctx, guest, gfDir+"/no-dir")).To(BeFalse())

			By("invalid base64 characters are refused; the console sees the file unchanged")
			for _, bad := range []string{"aGVs bG8=", "aGVsbG8=!", "aGVs\tbG8=", "aGVs-bG8_", "\u00e9"} {
				err := agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": bad}, nil)
				Expect(err).To(MatchAgentError("GenericError", "Base64 data contains invalid characters"), "buf-b64 %q", bad)
			}
			Expect(agent.Call(ctx, "guest-file-flush", map[string]any{"handle": h}, nil)).To(Succeed())
			data, _ := gfConsoleRead(ctx, guest, path)
			Expect(data).To(Equal(seed))

			By("counts out of range are refused for read (below 0, above 48 MiB) and write (below 0, above the data)")
			for _, count := range []int64{-1, 48<<20 + 1, 1 << 40} {
				err := agent.Call(ctx, "guest-file-read", map[string]any{"handle": h, "count": count}, nil)
				Expect(err).To(MatchAgentError("GenericError", fmt.Sprintf("value '%d' is invalid for argument count", count)))
			}
			for _, count := range []int64{-1, int64(len(written)) + 1} {
				err := agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64(written), "count": count}, nil)
				Expect(err).To(MatchAgentError("GenericError", fmt.Sprintf("value '%d' is invalid for argument count", count)))
			}
			Expect(agent.Call(ctx, "guest-file-flush", map[string]any{"handle": h}, nil)).To(Succeed())
			By("the console sees the file unchanged after all of them")
			data, _ = gfConsoleRead(ctx, guest, path)
			Expect(data).To(Equal(seed))

			By("the bounds themselves are accepted: read count 0 and 48 MiB, write count 0 and a prefix")
			r := gfRead(ctx, agent, h, 0)
			Expect(r.Count).To(BeZero())
			Expect(r.EOF).To(BeFalse(), "a read of 0 bytes does not meet the end")
			r = gfRead(ctx, agent, h, 48<<20)
			Expect(r.data).To(Equal(seed))
			Expect(r.EOF).To(BeTrue())
			Expect(gfSeek(ctx, agent, h, 0, "set")).To(Equal(gfSeekReply{Position: 0}))
			var w gfWriteReply
			Expect(agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64(written), "count": 0}, &w)).To(Succeed())
			Expect(w).To(Equal(gfWriteReply{Count: 0}))
			Expect(agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64([]byte("PREFIX-dropped")), "count": 6}, &w)).To(Succeed())
			Expect(w).To(Equal(gfWriteReply{Count: 6}))
			By("base64 may hold newlines (the reference's character set includes them)")
			Expect(agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": "LW5s\nLQ==\n"}, &w)).To(Succeed())
			Expect(w).To(Equal(gfWriteReply{Count: 4}))
			Expect(agent.Call(ctx, "guest-file-flush", map[string]any{"handle": h}, nil)).To(Succeed())
			By("the console sees only the 6-byte prefix and the 4 decoded bytes written over the start")
			data, _ = gfConsoleRead(ctx, guest, path)
			Expect(data).To(Equal(append([]byte("PREFIX-nl-"), seed[10:]...)))

			By("bad whence values: an unknown code, an unknown name, a wrong type")
			Expect(agent.Call(ctx, "guest-file-seek", map[string]any{"handle": h, "offset": 0, "whence": 3}, nil)).
				To(MatchAgentError("GenericError", "invalid whence code 3"))
			Expect(agent.Call(ctx, "guest-file-seek", map[string]any{"handle": h, "offset": 0, "whence": -1}, nil)).
				To(MatchAgentError("GenericError", "invalid whence code -1"))
			Expect(agent.Call(ctx, "guest-file-seek", map[string]any{"handle": h, "offset": 0, "whence": "SET"}, nil)).
				To(MatchAgentError("GenericError", "Parameter 'whence' does not accept value 'SET'"))
			Expect(agent.Call(ctx, "guest-file-seek", map[string]any{"handle": h, "offset": 0, "whence": true}, nil)).
				To(MatchAgentError("GenericError", "Invalid parameter type for 'whence', expected: GuestFileWhence"))
			Expect(gfSeek(ctx, agent, h, 0, "cur")).To(Equal(gfSeekReply{Position: 10}), "failed seeks do not move")
			gfClose(ctx, agent, h)
		}, NodeTimeout(3*time.Minute))

	// Last: it restarts the agent.
	It("hands out unique, increasing handles, also across an agent restart",
		cmdLabel("guest-file-open", "guest-file-close", "guest-file-read"), func(ctx SpecContext) {
			agent := guest.Agent()
			path := gfDir + "/handles"
			gfConsoleWrite(ctx, guest, path, seed, "644")

			By("opening the same file five times, closing some in between: each handle is new and larger than all before")
			var handles []int64
			last := int64(-1 << 62)
			for i := range 5 {
				h := gfOpen(ctx, agent, path, "r")
				Expect(h).To(BeNumerically(">", last), "open #%d", i)
				handles = append(handles, h)
				last = h
				if i%2 == 1 {
					gfClose(ctx, agent, h)
				}
			}
			By("a failed open takes no handle: the next one follows the last")
			err := agent.Call(ctx, "guest-file-open", map[string]any{"path": gfDir + "/missing", "mode": "r"}, nil)
			Expect(err).To(MatchAgentError("GenericError",
				fmt.Sprintf("failed to open file '%s' (mode: 'r'): No such file or directory", gfDir+"/missing")))
			h := gfOpen(ctx, agent, path, "r")
			Expect(h).To(Equal(last+1), "the reference allocates a handle only after the open succeeded")
			handles = append(handles, h)
			last = h

			By("each open handle reads the file independently from its own position")
			Expect(gfRead(ctx, agent, handles[0], 10).data).To(Equal(seed[:10]))
			Expect(gfRead(ctx, agent, handles[2], 20).data).To(Equal(seed[:20]))
			Expect(gfRead(ctx, agent, handles[0], 10).data).To(Equal(seed[10:20]))

			By("the console sees the counter the agent persisted in its state directory: the next handle")
			out, err := guest.Console().RunOK(ctx, "cat /var/run/qga.state")
			Expect(err).NotTo(HaveOccurred())
			Expect(out).To(ContainSubstring("fd_counter=" + strconv.FormatInt(last+1, 10)))

			By("killing the agent with SIGKILL from the console; the supervisor restarts it")
			oldPids := gfAgentPids(ctx, guest)
			Expect(oldPids).To(HaveLen(1))
			mark := guest.SerialMark()
			_, err = guest.Console().RunOK(ctx, "kill -9 "+oldPids[0])
			Expect(err).NotTo(HaveOccurred())
			_, err = guest.WaitSerialAfter(ctx, mark, marker(image.EventAgentExit(137)))
			Expect(err).NotTo(HaveOccurred())
			_, err = guest.WaitSerialAfter(ctx, mark, marker(image.EventAgentStart))
			Expect(err).NotTo(HaveOccurred())
			Expect(agent.SyncUntil(ctx, 5*time.Second)).To(Succeed())
			newPids := gfAgentPids(ctx, guest)
			Expect(newPids).To(HaveLen(1))
			Expect(newPids[0]).NotTo(Equal(oldPids[0]))

			By("handles of the killed agent are gone with its process")
			for _, old := range handles {
				err := agent.Call(ctx, "guest-file-read", map[string]any{"handle": old}, nil)
				Expect(err).To(MatchAgentError("GenericError", fmt.Sprintf("handle '%d' has not been found", old)))
			}
			By("the restarted agent continues the count: no handle is handed out twice")
			for range 3 {
				h := gfOpen(ctx, agent, path, "r")
				Expect(h).To(Equal(last+1), "the counter was persisted at each open, before the kill")
				last = h
				Expect(gfRead(ctx, agent, h, 4096).data).To(Equal(seed))
				gfClose(ctx, agent, h)
			}
		}, NodeTimeout(3*time.Minute))
})

// gfModeEntries are DescribeTable's arguments for the open-mode spec: the body, the entry
// description, and one entry per mode, each labelled with the commands it exercises.
func gfModeEntries(body func(SpecContext, string), describe func(string) string) []any {
	entries := []any{body, describe}
	for _, mode := range gfModes {
		entries = append(entries, Entry(nil, cmdLabel("guest-file-open", "guest-file-read", "guest-file-write",
			"guest-file-seek", "guest-file-flush", "guest-file-close"), NodeTimeout(2*time.Minute), mode))
	}
	return entries
}

// gfMode is what fopen(3) promises for a mode string, the reference's documented semantics.
type gfMode struct {
	read, write, truncate, append, create bool
}

func gfParseMode(mode string) gfMode {
	plus := strings.Contains(mode, "+")
	switch mode[0] {
	case 'r':
		return gfMode{read: true, write: plus}
	case 'w':
		return gfMode{read: plus, write: true, truncate: true, create: true}
	case 'a':
		return gfMode{read: plus, write: true, append: true, create: true}
	}
	panic("mode " + mode)
}

// The replies of guest-file-read, -write and -seek.
type gfReadReply struct {
	Count  int64  `json:"count"`
	BufB64 string `json:"buf-b64"`
	EOF    bool   `json:"eof"`
	data   []byte // BufB64 decoded
}

type gfWriteReply struct {
	Count int64 `json:"count"`
	EOF   bool  `json:"eof"`
}

type gfSeekReply struct {
	Position int64 `json:"position"`
	EOF      bool  `json:"eof"`
}

// gfOpen opens path; an empty mode leaves the argument out.
func gfOpen(ctx context.Context, agent *qga.Client, path, mode string) int64 {
	GinkgoHelper()
	args := map[string]any{"path": path}
	if mode != "" {
		args["mode"] = mode
	}
	var h int64
	Expect(agent.Call(ctx, "guest-file-open", args, &h)).To(Succeed(), "guest-file-open %s %q", path, mode)
	return h
}

// gfRead reads and decodes; count and the decoded length must agree.
func gfRead(ctx context.Context, agent *qga.Client, h, count int64) gfReadReply {
	GinkgoHelper()
	var r gfReadReply
	Expect(agent.Call(ctx, "guest-file-read", map[string]any{"handle": h, "count": count}, &r)).To(Succeed())
	r.data = gfUnB64(r.BufB64)
	Expect(int64(len(r.data))).To(Equal(r.Count), "count and buf-b64 disagree")
	Expect(r.Count).To(BeNumerically("<=", count))
	return r
}

func gfWrite(ctx context.Context, agent *qga.Client, h int64, data []byte) gfWriteReply {
	GinkgoHelper()
	var w gfWriteReply
	Expect(agent.Call(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": gfB64(data)}, &w)).To(Succeed())
	return w
}

func gfSeek(ctx context.Context, agent *qga.Client, h, offset int64, whence any) gfSeekReply {
	GinkgoHelper()
	var s gfSeekReply
	Expect(agent.Call(ctx, "guest-file-seek", map[string]any{"handle": h, "offset": offset, "whence": whence}, &s)).To(Succeed())
	return s
}

func gfClose(ctx context.Context, agent *qga.Client, h int64) {
	GinkgoHelper()
	var ret map[string]any
	Expect(agent.Call(ctx, "guest-file-close", map[string]any{"handle": h}, &ret)).To(Succeed())
	Expect(ret).To(BeEmpty())
}

func gfB64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func gfUnB64(s string) []byte {
	GinkgoHelper()
	b, err := base64.StdEncoding.DecodeString(s)
	Expect(err).NotTo(HaveOccurred(), "buf-b64 is not standard padded base64")
	return b
}

func gfSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// gfAllBytes is 0x00 to 0xff.
func gfAllBytes() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// gfOctal renders b for a printf format: every byte as \ooo, so no byte is special to the
// shell or to printf.
func gfOctal(b []byte) string {
	var s strings.Builder
	for _, c := range b {
		fmt.Fprintf(&s, "\\%03o", c)
	}
	return s.String()
}

// gfConsoleWrite writes data to a guest file through the console and sets its permissions.
func gfConsoleWrite(ctx context.Context, guest *vm.VM, path string, data []byte, perm string) {
	GinkgoHelper()
	_, err := guest.Console().RunOK(ctx, fmt.Sprintf("printf '%s' > %s && chmod %s %s", gfOctal(data), path, perm, path))
	Expect(err).NotTo(HaveOccurred())
	got, gotPerm := gfConsoleRead(ctx, guest, path)
	Expect(got).To(Equal(data), "the console's printf did not write what was meant")
	Expect(gotPerm).To(Equal(perm))
}

// gfConsoleRead returns a guest file's bytes (od) and permission bits (stat) as the console
// sees them.
func gfConsoleRead(ctx context.Context, guest *vm.VM, path string) ([]byte, string) {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, fmt.Sprintf("stat -c %%a %s && od -An -tx1 -v %s", path, path))
	Expect(err).NotTo(HaveOccurred())
	perm, hexdump, _ := strings.Cut(out, "\n")
	b, err := hex.DecodeString(strings.Join(strings.Fields(hexdump), ""))
	Expect(err).NotTo(HaveOccurred(), "od output: %q", hexdump)
	if len(b) == 0 {
		b = nil
	}
	return b, strings.TrimSpace(perm)
}

func gfConsoleSize(ctx context.Context, guest *vm.VM, path string) int64 {
	GinkgoHelper()
	return gfConsoleInt(ctx, guest, "stat -c %s "+path)
}

// gfConsoleInt runs a console command that prints one integer, and returns it.
func gfConsoleInt(ctx context.Context, guest *vm.VM, cmd string) int64 {
	GinkgoHelper()
	out, err := guest.Console().RunOK(ctx, cmd)
	Expect(err).NotTo(HaveOccurred())
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	Expect(err).NotTo(HaveOccurred(), "output of %q: %q", cmd, out)
	return n
}

func gfConsoleExists(ctx context.Context, guest *vm.VM, path string) bool {
	GinkgoHelper()
	out, rc, err := guest.Console().Run(ctx, "test -e "+path)
	Expect(err).NotTo(HaveOccurred())
	Expect(rc).To(BeElementOf(0, 1), "test -e: %s", out)
	return rc == 0
}

// gfAgentPids are the pids of the processes running the agent binary under test.
func gfAgentPids(ctx context.Context, guest *vm.VM) []string {
	GinkgoHelper()
	return consolePids(ctx, guest, agentProcName())
}

// gfAgentOpenFiles lists, through /proc, the files the agent process holds open.
func gfAgentOpenFiles(ctx context.Context, guest *vm.VM) []string {
	GinkgoHelper()
	pids := gfAgentPids(ctx, guest)
	Expect(pids).To(HaveLen(1))
	out, err := guest.Console().RunOK(ctx, fmt.Sprintf("for f in /proc/%s/fd/*; do readlink $f; done", pids[0]))
	Expect(err).NotTo(HaveOccurred())
	return strings.Fields(out)
}
