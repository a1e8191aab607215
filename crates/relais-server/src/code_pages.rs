//! The server's machine code moved onto 2 MiB pages at start.
//!
//! A shard at light load sleeps between packets; when it wakes, the few
//! hundred lines of code a packet runs are scattered over dozens of 4 KiB
//! pages of a 14 MiB text, and each page's translation is looked up again —
//! in a virtual machine a two-level walk of page tables that are cold too.
//! On 2 MiB pages the whole text takes a handful of translations.
//!
//! Linux maps a program's text from its file in 4 KiB pages (huge pages for
//! file text need `CONFIG_READ_ONLY_THP_FOR_FS`, not set on the kernels
//! measured here), so the aligned
//! middle of the text is copied into anonymous memory asked for in huge pages
//! (`MADV_HUGEPAGE`, honoured when transparent huge pages are `always` or
//! `madvise`, the common default) and moved over the original with one
//! `mremap`: the bytes at every address stay the same, so code running in the
//! range — this function's own — goes on undisturbed. The cost: profilers
//! that name functions from the mapped file (`perf`) see anonymous code there,
//! hence the switch to leave it (`huge_code_pages: false`).

use std::{fs, io, path::Path, ptr};

const HUGE_PAGE: usize = 2 << 20;

/// Move the 2 MiB-aligned part of the running executable's text onto
/// anonymous huge pages. Returns the bytes moved (0: the text spans no
/// aligned 2 MiB). Other threads may run meanwhile: what they execute is the
/// same before and after, and the move is one system call.
pub fn move_text_to_huge_pages() -> io::Result<usize> {
    let exe = fs::read_link("/proc/self/exe")?;
    let maps = fs::read_to_string("/proc/self/maps")?;
    let Some((start, end)) = executable_text(&maps, &exe) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no executable mapping of the program's file in /proc/self/maps",
        ));
    };
    let from = start.next_multiple_of(HUGE_PAGE);
    let to = end / HUGE_PAGE * HUGE_PAGE;
    if to <= from {
        return Ok(0);
    }
    let len = to - from;
    // SAFETY: the new mapping is ours until it is moved; the copy reads the
    // text (readable, never written) and writes only the new mapping; the
    // move replaces the text with the same bytes at the same addresses.
    unsafe {
        let reserved = libc::mmap(
            ptr::null_mut(),
            len + HUGE_PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if reserved == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = reserved as usize;
        let aligned = base.next_multiple_of(HUGE_PAGE);
        // Only the aligned part is kept: what precedes and follows it goes.
        if aligned > base {
            libc::munmap(reserved, aligned - base);
        }
        let tail = aligned + len;
        if base + len + HUGE_PAGE > tail {
            libc::munmap(tail as *mut libc::c_void, base + len + HUGE_PAGE - tail);
        }
        let copy = aligned as *mut libc::c_void;
        let undo = |error: io::Error| {
            libc::munmap(copy, len);
            Err(error)
        };
        if libc::madvise(copy, len, libc::MADV_HUGEPAGE) != 0 {
            return undo(io::Error::last_os_error());
        }
        ptr::copy_nonoverlapping(from as *const u8, copy as *mut u8, len);
        if libc::mprotect(copy, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            return undo(io::Error::last_os_error());
        }
        // Moved onto small pages the text would gain nothing and lose its
        // file's name (for profilers): moved only if the kernel gave huge ones.
        match huge_page_bytes(aligned) {
            Ok(0) => {
                return undo(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the kernel gave no 2 MiB pages (transparent_hugepage/enabled: never?)",
                ))
            }
            Err(e) => return undo(e),
            Ok(_) => {}
        }
        let moved = libc::mremap(
            copy,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            from as *mut libc::c_void,
        );
        if moved == libc::MAP_FAILED {
            return undo(io::Error::last_os_error());
        }
    }
    Ok(len)
}

/// How much of the mapping that starts at `start` the kernel backs with
/// transparent huge pages.
fn huge_page_bytes(start: usize) -> io::Result<usize> {
    Ok(anon_huge_bytes(
        &fs::read_to_string("/proc/self/smaps")?,
        start,
    ))
}

/// `AnonHugePages` of the mapping that starts at `start` in an smaps listing,
/// in bytes.
fn anon_huge_bytes(smaps: &str, start: usize) -> usize {
    let header = format!("{start:x}-");
    smaps
        .lines()
        .skip_while(|line| !line.starts_with(&header))
        .skip(1)
        .take_while(|line| !line.starts_with("VmFlags"))
        .find_map(|line| line.strip_prefix("AnonHugePages:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// The address range of `exe`'s executable mapping in a `/proc/self/maps`
/// listing.
fn executable_text(maps: &str, exe: &Path) -> Option<(usize, usize)> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let perms = fields.next()?;
        let path = fields.nth(3)?;
        if !perms.starts_with("r-x") || Path::new(path) != exe {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        Some((start, end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55952934a000-55952934b000 r--p 00000000 fe:00 123 /usr/local/bin/relais
55952934b000-55952a0a9000 r-xp 00ab1000 fe:00 123 /usr/local/bin/relais
55952a0a9000-55952a122000 r--p 0180e000 fe:00 123 /usr/local/bin/relais
7ff3f0c0d000-7ff3f0d63000 r-xp 00026000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
";

    #[test]
    fn the_text_is_the_programs_executable_mapping() {
        let exe = Path::new("/usr/local/bin/relais");
        assert_eq!(
            executable_text(MAPS, exe),
            Some((0x5595_2934_b000, 0x5595_2a0a_9000))
        );
        assert_eq!(executable_text(MAPS, Path::new("/other")), None);
    }

    #[test]
    fn huge_pages_are_read_from_the_mappings_own_block() {
        let smaps = "\
7f0000000000-7f0000400000 r-xp 00000000 00:00 0
Size:               4096 kB
AnonHugePages:         0 kB
VmFlags: rd ex mr mw me
7f0000400000-7f0000800000 r-xp 00000000 00:00 0
Size:               4096 kB
AnonHugePages:      4096 kB
VmFlags: rd ex mr mw me hg
";
        assert_eq!(anon_huge_bytes(smaps, 0x7f00_0040_0000), 4 << 20);
        assert_eq!(anon_huge_bytes(smaps, 0x7f00_0000_0000), 0);
        assert_eq!(anon_huge_bytes(smaps, 0x7f00_0080_0000), 0);
    }

    #[test]
    fn the_code_is_the_same_after_its_pages_moved() {
        let thp = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if !thp.is_ok_and(|mode| !mode.contains("[never]")) {
            eprintln!("transparent huge pages off here: nothing to move");
            return;
        }
        let exe = fs::read_link("/proc/self/exe").unwrap();
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let (start, _) = executable_text(&maps, &exe).unwrap();
        let from = start.next_multiple_of(HUGE_PAGE);
        let code = |len| {
            // SAFETY: the first pages of the text to move: mapped, readable.
            unsafe { std::slice::from_raw_parts(from as *const u8, len) }.to_vec()
        };
        let before = code(HUGE_PAGE);
        // The test binary's text is larger than 4 MiB: some of it moves.
        let moved = move_text_to_huge_pages().expect("text moved");
        assert!(moved >= HUGE_PAGE, "{moved}");
        assert!(code(HUGE_PAGE) == before, "the code changed");
        assert!(huge_page_bytes(from).unwrap() >= HUGE_PAGE);
        // What the file still maps spans no aligned 2 MiB: nothing more moves.
        assert_eq!(move_text_to_huge_pages().unwrap(), 0);
    }
}
