package specs

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	. "github.com/onsi/gomega/gstruct"

	"github.com/qgakit/qgakit/harness/image"
	"github.com/qgakit/qgakit/harness/vm"
)

// guest-fstrim is proven on the host: the data disk is a qcow2 that QEMU opens with
// discard=unmap, so a discard from the guest punches a hole in the file, and `qemu-img info`
// actual-size (the blocks the file really takes on the host) shrinks. Nothing else in the guest
// discards: the images mount the data disks without -o discard (and a cloud image's fstrim.timer
// is masked), so deleting a file frees blocks in the filesystem but not in the image until
// something trims them.

// fstrimReply is guest-fstrim's reply (7.2's GuestFilesystemTrimResponse).
type fstrimReply struct {
	Paths []fstrimPath `json:"paths"`
}

type fstrimPath struct {
	Path    string `json:"path"`
	Trimmed *int64 `json:"trimmed"`
	Minimum *int64 `json:"minimum"`
	Error   string `json:"error"`
}

const fstrimMiB = 1 << 20

var _ = Describe("guest-fstrim", Label("destructive"), cmdLabel("guest-fstrim"), func() {
	It("gives a deleted file's space back to the host's qcow2, and reports each mount with the minimum it passed to the kernel", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		ext4Disk, xfsDisk := filepath.Join(dir, "ext4.qcow2"), filepath.Join(dir, "xfs.qcow2")
		Expect(image.CreateExt4Disk(ctx, ext4Disk, image.DiskSpec{Size: 512 * fstrimMiB})).To(Succeed())
		Expect(image.CreateXFSDisk(ctx, xfsDisk, image.DiskSpec{})).To(Succeed())
		guest := bootGuest(ctx,
			withVM(vm.WithDisk(vm.Disk{Path: ext4Disk, Node: "ext4"}), vm.WithDisk(vm.Disk{Path: xfsDisk, Node: "xfs"})),
			withMounts("vda", "vdb"))
		agent, con := guest.Agent(), guest.Console()

		By("the console lists the guest's block-device filesystems: the paths guest-fstrim must report")
		mounts := expectDataMounts(ctx, guest, map[string]string{"/mnt/vda": "ext4", "/mnt/vdb": "xfs"})

		By("writing 200 MiB to the ext4 filesystem and syncing: the qcow2 grows by about that much")
		before := qcow2ActualSize(ctx, ext4Disk)
		_, err := con.RunOK(ctx, "dd if=/dev/zero of=/mnt/vda/big bs=1M count=200 2>&1 && sync")
		Expect(err).NotTo(HaveOccurred())
		full := qcow2ActualSize(ctx, ext4Disk)
		added := full - before
		Expect(added).To(BeNumerically(">=", 200*fstrimMiB), "the 200 MiB write did not reach the image")

		By("deleting it: the image keeps its size, since nothing has discarded the blocks yet")
		_, err = con.RunOK(ctx, "rm /mnt/vda/big && sync")
		Expect(err).NotTo(HaveOccurred())
		Expect(qcow2ActualSize(ctx, ext4Disk)).To(BeNumerically(">=", before+added*9/10),
			"the image shrank on delete alone, so the shrink below would prove nothing about guest-fstrim")

		By("guest-fstrim with minimum 1 MiB: one entry per mount, each trimmed and with minimum 1 MiB")
		var reply fstrimReply
		Expect(agent.Call(ctx, "guest-fstrim", map[string]any{"minimum": fstrimMiB}, &reply)).To(Succeed())
		byPath := map[string]fstrimPath{}
		for _, p := range reply.Paths {
			Expect(byPath).NotTo(HaveKey(p.Path), "guest-fstrim reports %s twice", p.Path)
			byPath[p.Path] = p
		}
		Expect(byPath).To(HaveLen(len(mounts)), "guest-fstrim must report exactly the mounts: %+v", reply)
		// The kernel writes back max(minimum, the disk's discard granularity) as the minimum it
		// used; 1 MiB is above QEMU's granularity, so an agent that passed the request on reports
		// it unchanged. The freed 200 MiB are in extents far larger than 1 MiB. The image's own
		// filesystems (a cloud image's root) are trimmed too, by whatever they had free.
		keys := Keys{
			"/mnt/vda": MatchAllFields(Fields{
				"Path": Equal("/mnt/vda"), "Error": BeEmpty(),
				"Minimum": PointTo(Equal(int64(fstrimMiB))), "Trimmed": PointTo(BeNumerically(">=", 200*fstrimMiB)),
			}),
			"/mnt/vdb": MatchAllFields(Fields{
				"Path": Equal("/mnt/vdb"), "Error": BeEmpty(),
				"Minimum": PointTo(Equal(int64(fstrimMiB))), "Trimmed": PointTo(BeNumerically(">", 0)),
			}),
		}
		for mp := range mounts {
			if _, ok := keys[mp]; !ok {
				keys[mp] = MatchAllFields(Fields{
					"Path": Equal(mp), "Error": BeEmpty(),
					"Minimum": PointTo(Equal(int64(fstrimMiB))), "Trimmed": PointTo(BeNumerically(">=", 0)),
				})
			}
		}
		Expect(byPath).To(MatchAllKeys(keys))

		By("the host's qcow2 gave back at least 90% of what the file added")
		trimmed := qcow2ActualSize(ctx, ext4Disk)
		fmt.Fprintf(GinkgoWriter, "qcow2 actual-size: %d before the write, %d after it, %d after guest-fstrim\n", before, full, trimmed)
		Expect(full - trimmed).To(BeNumerically(">=", added*9/10))

		By("a minimum larger than a block group (ext4) and an allocation group (xfs): each kernel refuses it, so it was passed through")
		reply = fstrimReply{}
		Expect(agent.Call(ctx, "guest-fstrim", map[string]any{"minimum": 1 << 30}, &reply)).To(Succeed())
		var refused []fstrimPath
		for mp := range mounts {
			refused = append(refused, fstrimPath{Path: mp, Error: "failed to trim: Invalid argument"})
		}
		Expect(reply.Paths).To(ConsistOf(refused))
	}, SpecTimeout(bootTimeout+3*time.Minute))
})

// qcow2ActualSize is `qemu-img info` actual-size of an image QEMU has open: the bytes the file
// takes on the host. -U, because QEMU holds the image's lock.
func qcow2ActualSize(ctx context.Context, img string) int64 {
	GinkgoHelper()
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", img).Output()
	Expect(err).NotTo(HaveOccurred(), "qemu-img info %s", img)
	var info struct {
		ActualSize *int64 `json:"actual-size"`
	}
	Expect(json.Unmarshal(out, &info)).To(Succeed())
	Expect(info.ActualSize).NotTo(BeNil(), "qemu-img info %s has no actual-size: %s", img, out)
	return *info.ActualSize
}
