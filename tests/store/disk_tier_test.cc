// DiskTier against a real LMDB store in a temporary directory: restart survival, expiry,
// checksums, broken stores set aside, the budget, the write-behind queue, purge.
#include "unherd/disk_tier.h"

#include <gtest/gtest.h>
#include <linux/capability.h>
#include <lmdb.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "store/fault_guard.h"
#include "unherd/clock.h"

namespace unherd {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class DiskTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root = fs::temp_directory_path() /
           ("unherd-disk-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root);
    fs::create_directories(root);
    path = (root / "cache").string();
  }
  void TearDown() override { fs::remove_all(root); }

  DiskTierOptions options(std::uint64_t budget = 64ull << 20) {
    DiskTierOptions o;
    o.path = path;
    o.budget = budget;
    o.warn = [this](const std::string& m) { warnings.push_back(m); };
    return o;
  }

  TierRecord record(std::string value, Duration fresh = 10s, Duration stale = 60s,
                    Duration sie = 300s) {
    const WallTime now = clock.wall_now();
    auto w = [](Duration d) { return std::chrono::duration_cast<WallTime::duration>(d); };
    return TierRecord{std::move(value), now, now + w(fresh), now + w(fresh + stale),
                      now + w(fresh + std::max(stale, sie))};
  }

  fs::path root;
  std::string path;
  ManualClock clock;
  std::vector<std::string> warnings;
};

TEST_F(DiskTierTest, RecordsSurviveReopeningWithTheirDeadlines) {
  const TierRecord r = record("hello");
  {
    DiskTier disk(options(), clock);
    disk.insert("/a", r);
    disk.insert("/b", record("world"));
    disk.flush();
    EXPECT_EQ(disk.stats().entries, 2u);
  }
  DiskTier disk(options(), clock);
  EXPECT_TRUE(disk.moved_aside().empty());
  EXPECT_EQ(disk.stats().entries, 2u);
  EXPECT_GT(disk.stats().bytes, 0u);
  auto got = disk.lookup("/a", clock.wall_now());
  ASSERT_TRUE(got);
  EXPECT_EQ(got->value, "hello");
  EXPECT_EQ(got->stored_at, r.stored_at);
  EXPECT_EQ(got->fresh_until, r.fresh_until);
  EXPECT_EQ(got->stale_until, r.stale_until);
  EXPECT_EQ(got->stale_if_error_until, r.stale_if_error_until);
  EXPECT_FALSE(disk.lookup("/c", clock.wall_now()));
  EXPECT_EQ(disk.stats().hits, 1u);
  EXPECT_EQ(disk.stats().misses, 1u);
  EXPECT_TRUE(warnings.empty());
}

TEST_F(DiskTierTest, AWriteReplacesTheRecordAndItsAccounting) {
  DiskTier disk(options(), clock);
  disk.insert("/a", record(std::string(1000, 'x')));
  disk.flush();
  const auto big = disk.stats().bytes;
  disk.insert("/a", record("small"));
  disk.flush();
  EXPECT_EQ(disk.stats().entries, 1u);
  EXPECT_LT(disk.stats().bytes, big - 900);
  EXPECT_EQ(disk.lookup("/a", clock.wall_now())->value, "small");
}

TEST_F(DiskTierTest, ARecordPastItsStaleIfErrorDeadlineIsNeverReturned) {
  DiskTier disk(options(), clock);
  disk.insert("/a", record("v", 1s, 1s, 1s));
  disk.flush();
  EXPECT_TRUE(disk.lookup("/a", clock.wall_now() + 1s));
  EXPECT_FALSE(disk.lookup("/a", clock.wall_now() + 2s));
}

// A keep window (revalidation only) outlives stale-if-error, in whole seconds, across a reopen.
TEST_F(DiskTierTest, AKeptRecordIsReturnedUntilItsKeepDeadlineAcrossAReopen) {
  TierRecord r = record("v", 1s, 1s, 1s);
  r.keep_until = r.stale_if_error_until + 1500ms;  // rounded up to 2 s
  {
    DiskTier disk(options(), clock);
    disk.insert("/a", r);
    disk.flush();
  }
  DiskTier disk(options(), clock);
  auto got = disk.lookup("/a", clock.wall_now() + 3s);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->stale_if_error_until, r.stale_if_error_until);
  EXPECT_EQ(got->keep_until, r.stale_if_error_until + 2s);
  EXPECT_FALSE(disk.lookup("/a", clock.wall_now() + 4s));
}

TEST_F(DiskTierTest, InsertingADeadRecordRemovesTheKey) {
  DiskTier disk(options(), clock);
  disk.insert("/a", record("v"));
  disk.flush();
  disk.insert("/a", TierRecord{});
  disk.flush();
  EXPECT_FALSE(disk.lookup("/a", clock.wall_now()));
  EXPECT_EQ(disk.stats().entries, 0u);
  EXPECT_EQ(disk.stats().dropped_writes, 0u);
}

TEST_F(DiskTierTest, AStoreMarkedDamagedWhileRunningIsSetAsideAtTheNextStart) {
  { DiskTier disk(options(), clock); }
  { std::ofstream(fs::path(path) / "unherd.broken") << "MDB_CORRUPTED"; }
  DiskTier disk(options(), clock);
  EXPECT_FALSE(disk.moved_aside().empty());
  EXPECT_TRUE(disk.stats().available);
  EXPECT_FALSE(fs::exists(fs::path(path) / "unherd.broken"));
}

TEST_F(DiskTierTest, KeysLongerThanLmdbAllowsAreStoredApart) {
  DiskTier disk(options(), clock);
  const std::string base(600, 'k');
  disk.insert(base + "1", record("one"));
  disk.insert(base + "2", record("two"));
  disk.insert("", record("empty"));
  disk.flush();
  EXPECT_EQ(disk.lookup(base + "1", clock.wall_now())->value, "one");
  EXPECT_EQ(disk.lookup(base + "2", clock.wall_now())->value, "two");
  EXPECT_EQ(disk.lookup("", clock.wall_now())->value, "empty");
  EXPECT_FALSE(disk.lookup(base + "3", clock.wall_now()));
  EXPECT_EQ(disk.purge_prefix(base + "2"), 1u);
  EXPECT_TRUE(disk.lookup(base + "1", clock.wall_now()));
  EXPECT_FALSE(disk.lookup(base + "2", clock.wall_now()));
}

// Overwrites one byte in every copy of `needle` in the store's data file (LMDB copies pages on
// write, so older copies of a record may linger in free pages).
void corrupt_on_disk(const std::string& dir, const std::string& needle) {
  const fs::path file = fs::path(dir) / "data.mdb";
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::fstream out(file, std::ios::binary | std::ios::in | std::ios::out);
  int found = 0;
  for (auto at = bytes.find(needle); at != std::string::npos; at = bytes.find(needle, at + 1)) {
    out.seekp(static_cast<std::streamoff>(at + needle.size() / 2));
    out.put('#');
    ++found;
  }
  ASSERT_GT(found, 0);
}

TEST_F(DiskTierTest, ACorruptRecordIsAMissAndIsRemoved) {
  {
    DiskTier disk(options(), clock);
    disk.insert("/bad", record("precious-value-bytes"));
    disk.insert("/good", record("other-value"));
  }
  corrupt_on_disk(path, "precious-value-bytes");
  DiskTier disk(options(), clock);
  EXPECT_FALSE(disk.lookup("/bad", clock.wall_now()));
  EXPECT_EQ(disk.stats().corrupt, 1u);
  disk.flush();
  EXPECT_EQ(disk.stats().entries, 1u);
  EXPECT_EQ(disk.lookup("/good", clock.wall_now())->value, "other-value");
}

TEST_F(DiskTierTest, AStoreThatCannotBeOpenedIsMovedAsideAndAFreshOneUsed) {
  fs::create_directories(path);
  {
    std::ofstream garbage(fs::path(path) / "data.mdb", std::ios::binary);
    for (int i = 0; i < 20000; ++i)
      garbage << "not an lmdb file ";
  }
  DiskTier disk(options(), clock);
  ASSERT_FALSE(disk.moved_aside().empty());
  EXPECT_TRUE(fs::exists(fs::path(disk.moved_aside()) / "data.mdb"));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find(path), std::string::npos);
  EXPECT_NE(warnings[0].find(disk.moved_aside()), std::string::npos);
  EXPECT_TRUE(disk.stats().available);
  disk.insert("/a", record("works"));
  disk.flush();
  EXPECT_EQ(disk.lookup("/a", clock.wall_now())->value, "works");
}

TEST_F(DiskTierTest, APathThatIsAFileIsMovedAside) {
  { std::ofstream(path) << "a file, not a directory"; }
  DiskTier disk(options(), clock);
  EXPECT_FALSE(disk.moved_aside().empty());
  EXPECT_TRUE(fs::is_regular_file(disk.moved_aside()));
  EXPECT_TRUE(disk.stats().available);
}

// While alive, this thread is subject to file modes even as root: CAP_DAC_OVERRIDE and
// CAP_DAC_READ_SEARCH are off in its effective set (they stay permitted, and come back after).
// A DiskTier opened on this thread, and the process it forks, inherit that.
class WithoutDacOverride {
 public:
  WithoutDacOverride() {
    syscall(SYS_capget, &header_, saved_);
    __user_cap_data_struct lowered[2] = {saved_[0], saved_[1]};
    lowered[0].effective &= ~((1u << CAP_DAC_OVERRIDE) | (1u << CAP_DAC_READ_SEARCH));
    ok_ = syscall(SYS_capset, &header_, lowered) == 0;
  }
  ~WithoutDacOverride() { syscall(SYS_capset, &header_, saved_); }
  bool ok() const { return ok_; }

 private:
  __user_cap_header_struct header_{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct saved_[2]{};
  bool ok_ = false;
};

TEST_F(DiskTierTest, AStoreThisProcessMayNotOpenIsLeftUntouchedAndTheTierSaysWhy) {
  {
    DiskTier disk(options(), clock);
    disk.insert("/warm", record("kept"));
  }
  fs::permissions(path, fs::perms::none);
  {
    WithoutDacOverride as_a_plain_user;
    ASSERT_TRUE(as_a_plain_user.ok());
    DiskTier disk(options(), clock);
    const TierStats s = disk.stats();
    EXPECT_FALSE(s.available);
    EXPECT_TRUE(disk.moved_aside().empty());
    EXPECT_NE(s.unavailable_reason.find(path), std::string::npos) << s.unavailable_reason;
    EXPECT_NE(s.unavailable_reason.find("Permission denied"), std::string::npos)
        << s.unavailable_reason;
    EXPECT_FALSE(disk.lookup("/warm", clock.wall_now()));
  }
  fs::permissions(path, fs::perms::owner_all);
  EXPECT_EQ(std::distance(fs::directory_iterator(root), fs::directory_iterator()), 1)
      << "nothing set aside";
  DiskTier disk(options(), clock);
  EXPECT_TRUE(disk.stats().available);
  EXPECT_EQ(disk.lookup("/warm", clock.wall_now())->value, "kept");
}

TEST_F(DiskTierTest, AStoreUnderAFileIsUnavailableAndNothingIsMoved) {
  { std::ofstream(root / "file") << "not a directory"; }
  DiskTierOptions o = options();
  o.path = (root / "file" / "cache").string();
  DiskTier disk(o, clock);
  EXPECT_FALSE(disk.stats().available);
  EXPECT_TRUE(disk.moved_aside().empty());
  EXPECT_NE(disk.stats().unavailable_reason.find(o.path), std::string::npos);
  EXPECT_TRUE(fs::is_regular_file(root / "file"));
}

TEST_F(DiskTierTest, ADataFileTruncatedWhileOpenSwitchesTheTierOffInsteadOfCrashing) {
  DiskTier disk(options(), clock);
  for (int i = 0; i < 300; ++i)
    disk.insert("/t/" + std::to_string(i), record(std::string(3000, 'v')));
  disk.flush();
  const fs::path data = fs::path(path) / "data.mdb";
  fs::resize_file(data, fs::file_size(data) / 4);
  for (int i = 0; i < 300; ++i)  // reads through the map would fault past the new end
    EXPECT_FALSE(disk.lookup("/t/" + std::to_string(i), clock.wall_now())) << i;
  EXPECT_FALSE(disk.stats().available);
  // Found by the size guard or the meta pages' check, whichever looks first.
  const std::string why = disk.stats().unavailable_reason;
  EXPECT_TRUE(why.find("shrank") != std::string::npos ||
              why.find("past the file's end") != std::string::npos)
      << why;
  disk.insert("/after", record("v"));
  disk.flush();
  EXPECT_EQ(disk.purge_prefix("/t/"), 0u);
  EXPECT_FALSE(disk.erase("/t/1"));
}

// The size guard must never take a healthy store's growth for a shrink: readers check the size
// while the writer's commits grow the file (once, it read its record after the file's size, and
// ordinary load got the warm store set aside). Bounded in count, not in time.
TEST_F(DiskTierTest, AHealthyStoreUnderWriteHeavyLoadIsNeverJudgedDamaged) {
  for (int round = 0; round < 3; ++round) {
    fs::remove_all(path);
    {
      DiskTier disk(options(256ull << 20), clock);
      std::atomic<bool> writing{true};
      std::vector<std::thread> readers;
      for (int r = 0; r < 4; ++r) {
        readers.emplace_back([&, r] {
          for (int i = 0; writing.load(); ++i)
            disk.lookup("/w/" + std::to_string((i * 7 + r) % 3000), clock.wall_now());
        });
      }
      for (int i = 0; i < 3000; ++i)
        disk.insert("/w/" + std::to_string(i), record(std::string(6000, 'v')));
      disk.flush();
      writing = false;
      for (auto& t : readers)
        t.join();
      ASSERT_TRUE(disk.stats().available)
          << "round " << round << ": " << disk.stats().unavailable_reason;
    }
    DiskTier again(options(256ull << 20), clock);
    EXPECT_TRUE(again.stats().available);
    EXPECT_TRUE(again.lookup("/w/2999", clock.wall_now())) << "round " << round;
    for (const auto& w : warnings)
      EXPECT_EQ(w.find("aside"), std::string::npos) << w;
  }
}

// Churn — writes, erasures, purges and evictions under a small budget — with readers checking the
// store all along: a healthy store is never judged damaged (LMDB may leave pages past the file's
// end that it allocated and freed in one transaction; the meta check allows for that).
TEST_F(DiskTierTest, AHealthyStoreUnderChurnIsNeverJudgedDamaged) {
  DiskTier disk(options(2u << 20), clock);
  std::atomic<bool> churning{true};
  std::thread reader([&] {
    for (int i = 0; churning.load(); ++i)
      disk.lookup("/c/" + std::to_string(i % 500), clock.wall_now());
  });
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 200; ++i)
      disk.insert("/c/" + std::to_string((round * 37 + i) % 500),
                  record(std::string(4000 + i, 'c')));
    for (int i = 0; i < 20; ++i)
      disk.erase("/c/" + std::to_string((round * 11 + i) % 500));
    disk.purge_prefix("/c/" + std::to_string(round % 10));
    disk.flush();
  }
  churning = false;
  reader.join();
  EXPECT_TRUE(disk.stats().available) << disk.stats().unavailable_reason;
  EXPECT_GT(disk.stats().evictions, 0u);
}

TEST_F(DiskTierTest, ADataFileTruncatedWhileOpenIsSetAsideAtTheNextStart) {
  {
    DiskTier disk(options(), clock);
    for (int i = 0; i < 300; ++i)
      disk.insert("/t/" + std::to_string(i), record(std::string(3000, 'v')));
    disk.flush();
    const fs::path data = fs::path(path) / "data.mdb";
    fs::resize_file(data, fs::file_size(data) / 4);
    disk.insert("/after", record("v"));  // the writer finds it
    disk.flush();
    EXPECT_FALSE(disk.stats().available);
  }
  DiskTier disk(options(), clock);
  EXPECT_FALSE(disk.moved_aside().empty());
  EXPECT_TRUE(disk.stats().available);
  EXPECT_FALSE(disk.lookup("/t/1", clock.wall_now()));
}

TEST_F(DiskTierTest, AnLmdbStoreOfAnotherFormatIsMovedAside) {
  fs::create_directories(path);
  MDB_env* env = nullptr;
  ASSERT_EQ(mdb_env_create(&env), 0);
  mdb_env_set_maxdbs(env, 8);
  ASSERT_EQ(mdb_env_open(env, path.c_str(), 0, 0644), 0);
  MDB_txn* txn = nullptr;
  MDB_dbi dbi;
  ASSERT_EQ(mdb_txn_begin(env, nullptr, 0, &txn), 0);
  ASSERT_EQ(mdb_dbi_open(txn, "info", MDB_CREATE, &dbi), 0);
  MDB_val k{6, const_cast<char*>("format")}, v{13, const_cast<char*>("unherd-disk 0")};
  ASSERT_EQ(mdb_put(txn, dbi, &k, &v, 0), 0);
  ASSERT_EQ(mdb_txn_commit(txn), 0);
  mdb_env_close(env);

  DiskTier disk(options(), clock);
  EXPECT_FALSE(disk.moved_aside().empty());
  ASSERT_FALSE(warnings.empty());
  EXPECT_NE(warnings[0].find("unherd-disk 0"), std::string::npos);
}

TEST_F(DiskTierTest, AStoreInUseIsLeftAloneAndTheTierStoresNothing) {
  DiskTier first(options(), clock);
  DiskTier second(options(), clock);
  EXPECT_TRUE(first.stats().available);
  EXPECT_FALSE(second.stats().available);
  EXPECT_TRUE(second.moved_aside().empty());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("in use"), std::string::npos);
  second.insert("/a", record("v"));
  EXPECT_EQ(second.stats().dropped_writes, 1u);
  EXPECT_FALSE(second.lookup("/a", clock.wall_now()));
}

// Deleting unherd.lock by hand does not let a second tier use a store in use: the data file is
// locked as well.
TEST_F(DiskTierTest, AStoreInUseStaysInUseWhenItsLockFileIsDeleted) {
  DiskTier first(options(), clock);
  first.insert("/a", record("first"));
  first.flush();
  fs::remove(fs::path(path) / "unherd.lock");
  DiskTier second(options(), clock);
  EXPECT_TRUE(first.stats().available);
  EXPECT_FALSE(second.stats().available);
  EXPECT_NE(second.stats().unavailable_reason.find("in use"), std::string::npos);
  EXPECT_TRUE(second.moved_aside().empty());
  EXPECT_EQ(first.lookup("/a", clock.wall_now())->value, "first");
}

TEST_F(DiskTierTest, TheBudgetEvictsExpiredRecordsFirstThenTheLeastRecentlyUsed) {
  DiskTier disk(options(256 * 1024), clock);
  const std::string kb(1024, 'v');
  disk.insert("/expired", record(kb, 1s, 0s, 0s));
  disk.insert("/used", record(kb));
  for (int i = 0; i < 100; ++i)
    disk.insert("/old/" + std::to_string(i), record(kb));
  disk.flush();
  clock.advance(5s);                                    // "/expired" is dead now
  ASSERT_TRUE(disk.lookup("/used", clock.wall_now()));  // renews its recency
  disk.flush();
  for (int i = 0; i < 150; ++i)
    disk.insert("/new/" + std::to_string(i), record(kb));
  disk.flush();
  const TierStats s = disk.stats();
  EXPECT_LE(s.bytes, s.budget);
  EXPECT_GT(s.evictions, 0u);
  EXPECT_EQ(s.expired, 1u);
  EXPECT_TRUE(disk.lookup("/used", clock.wall_now()));
  EXPECT_FALSE(disk.lookup("/old/0", clock.wall_now()));
  EXPECT_TRUE(disk.lookup("/new/149", clock.wall_now()));
  EXPECT_EQ(s.entries, s.writes - s.evictions - s.expired);
}

TEST_F(DiskTierTest, AFullQueueDropsWritesInsteadOfWaiting) {
  DiskTierOptions o = options();
  o.queue_bytes = 4096;
  DiskTier disk(o, clock);
  disk.insert("/big", record(std::string(8192, 'x')));
  EXPECT_EQ(disk.stats().dropped_writes, 1u);
  disk.insert("/over-budget", record(std::string(100 << 20, 'x')));
  EXPECT_EQ(disk.stats().dropped_writes, 2u);
  disk.flush();
  EXPECT_EQ(disk.stats().entries, 0u);
}

TEST_F(DiskTierTest, EraseAndPurgeCoverWritesStillQueued) {
  DiskTier disk(options(), clock);
  for (int i = 0; i < 50; ++i) {
    disk.insert("/p/" + std::to_string(i), record("v"));
    disk.insert("/q/" + std::to_string(i), record("v"));
  }
  disk.erase("/q/7");
  disk.purge_prefix("/p/");  // no flush before: some of these are still queued
  disk.flush();
  for (int i = 0; i < 50; ++i)
    EXPECT_FALSE(disk.lookup("/p/" + std::to_string(i), clock.wall_now())) << i;
  EXPECT_FALSE(disk.lookup("/q/7", clock.wall_now()));
  EXPECT_TRUE(disk.lookup("/q/8", clock.wall_now()));
  EXPECT_EQ(disk.stats().entries, 49u);
  EXPECT_EQ(disk.purge_prefix("/q/"), 49u);
  EXPECT_FALSE(disk.lookup("/q/8", clock.wall_now()));  // at once
  disk.flush();                                         // the counts follow the writer's commit
  EXPECT_EQ(disk.stats().entries, 0u);
  EXPECT_EQ(disk.stats().bytes, 0u);
}

// erase() and purge_prefix() take effect at once, without a write transaction on the caller's
// thread: what they removed is never found again, and a write made after them is.
TEST_F(DiskTierTest, ErasuresTakeEffectAtOnceAndLaterWritesWin) {
  DiskTier disk(options(), clock);
  for (int i = 0; i < 20; ++i)
    disk.insert("/e/" + std::to_string(i), record("old"));
  disk.flush();
  EXPECT_TRUE(disk.erase("/e/1"));
  EXPECT_FALSE(disk.erase("/nothing"));
  EXPECT_EQ(disk.purge_prefix("/e/1"), 10u);  // /e/1 and /e/10../e/19, counted as stored
  EXPECT_FALSE(disk.lookup("/e/1", clock.wall_now()));
  EXPECT_FALSE(disk.lookup("/e/15", clock.wall_now()));
  EXPECT_TRUE(disk.lookup("/e/2", clock.wall_now()));
  disk.insert("/e/15", record("new"));  // after the purge: it stands
  disk.flush();
  EXPECT_EQ(disk.lookup("/e/15", clock.wall_now())->value, "new");
  EXPECT_FALSE(disk.lookup("/e/12", clock.wall_now()));
  disk.flush();
  EXPECT_EQ(disk.stats().entries, 10u);
}

TEST_F(DiskTierTest, ResetZeroesCountersButNotContents) {
  DiskTier disk(options(), clock);
  disk.insert("/a", record("v"));
  disk.flush();
  disk.lookup("/a", clock.wall_now());
  disk.reset_stats();
  const TierStats s = disk.stats();
  EXPECT_EQ(s.hits, 0u);
  EXPECT_EQ(s.writes, 0u);
  EXPECT_EQ(s.entries, 1u);
}

// Damage at rest that LMDB itself trips over: pages overwritten with noise, seed by seed. Opening
// such a store and using it must never bring the process down, and never serve a record other
// than the one written: either the damage is found and the store set aside, or what is read
// passes its checksum.
class DamagedStoreTest : public DiskTierTest, public ::testing::WithParamInterface<int> {};

TEST_P(DamagedStoreTest, NoiseInPagesAtRestIsSetAsideOrMissedNeverServedNorFatal) {
  auto value_of = [](int i) {
    return std::string(static_cast<std::size_t>(50 + i * 37 % 6000), 'a' + i % 26);
  };
  {
    DiskTier disk(options(), clock);
    for (int i = 0; i < 400; ++i)
      disk.insert("/d/" + std::to_string(i), record(value_of(i)));
  }
  const fs::path data = fs::path(path) / "data.mdb";
  const std::size_t pages = fs::file_size(data) / 4096;
  ASSERT_GT(pages, 100u);
  std::mt19937 rng(static_cast<unsigned>(GetParam()));
  {
    std::fstream f(data, std::ios::binary | std::ios::in | std::ios::out);
    for (int n = 0; n < 4; ++n) {  // pages 0 and 1 are LMDB's meta pages, checked on open
      const std::size_t page = 2 + rng() % (pages - 2);
      f.seekp(static_cast<std::streamoff>(page * 4096));
      for (int b = 0; b < 4096; ++b)
        f.put(static_cast<char>(rng()));
    }
  }
  DiskTier disk(options(), clock);
  for (int i = 0; i < 400; ++i) {
    auto got = disk.lookup("/d/" + std::to_string(i), clock.wall_now());
    if (got) {
      EXPECT_EQ(got->value, value_of(i)) << i;
    }
  }
  disk.insert("/new", record("fresh"));
  disk.flush();
  disk.purge_prefix("/d/1");
  if (!disk.moved_aside().empty()) {
    EXPECT_TRUE(disk.stats().available);
    EXPECT_EQ(disk.lookup("/new", clock.wall_now())->value, "fresh");
  }
}

INSTANTIATE_TEST_SUITE_P(Seeds, DamagedStoreTest, ::testing::Range(1, 17));

// Damage that appears while the store is open: its meta pages zeroed under it. Found before LMDB
// reads a page (once, that asserted or faulted and took the process down): the tier goes off, and
// the store is set aside at the next start.
TEST_F(DiskTierTest, MetaPagesZeroedWhileOpenSwitchTheTierOffAndTheStoreIsSetAside) {
  {
    DiskTier disk(options(), clock);
    for (int i = 0; i < 100; ++i)
      disk.insert("/z/" + std::to_string(i), record(std::string(3000, 'v')));
    disk.flush();
    const fs::path data = fs::path(path) / "data.mdb";
    {
      std::fstream f(data, std::ios::binary | std::ios::in | std::ios::out);
      const std::string zeros(8192, '\0');
      f.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
    }
    EXPECT_FALSE(disk.lookup("/z/1", clock.wall_now()));
    EXPECT_FALSE(disk.stats().available);
    EXPECT_NE(disk.stats().unavailable_reason.find("meta page"), std::string::npos)
        << disk.stats().unavailable_reason;
    disk.insert("/after", record("v"));
    EXPECT_FALSE(disk.erase("/z/2"));
    EXPECT_EQ(disk.purge_prefix("/z/"), 0u);
  }
  DiskTier again(options(), clock);
  EXPECT_FALSE(again.moved_aside().empty());
  EXPECT_TRUE(again.stats().available);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNHERD_SANITIZED 1
#endif

// Pages overwritten with noise while the store is open, meta pages intact: LMDB may read garbage
// pointers and fault, or fail its assertions. Contained: every lookup is a correct record, a
// miss, or the tier off — the process goes on. (Not under sanitizers: their own fault handlers
// report the contained faults. Deleting through damaged pages is left out: LMDB may then spend
// long in its free-page lists, which no check bounds — see README, what stays unprotected.)
class DamagedWhileOpenTest : public DiskTierTest, public ::testing::WithParamInterface<int> {};

TEST_P(DamagedWhileOpenTest, NoiseInPagesWhileOpenIsContainedNeverFatal) {
#ifdef UNHERD_SANITIZED
  GTEST_SKIP() << "fault containment is not exercised under sanitizers";
#endif
  auto value_of = [](int i) {
    return std::string(static_cast<std::size_t>(50 + i * 37 % 6000), 'a' + i % 26);
  };
  DiskTier disk(options(), clock);
  for (int i = 0; i < 400; ++i)
    disk.insert("/d/" + std::to_string(i), record(value_of(i)));
  disk.flush();
  const fs::path data = fs::path(path) / "data.mdb";
  const std::size_t pages = fs::file_size(data) / 4096;
  ASSERT_GT(pages, 100u);
  std::mt19937 rng(static_cast<unsigned>(GetParam()));
  {
    std::fstream f(data, std::ios::binary | std::ios::in | std::ios::out);
    for (int n = 0; n < 8; ++n) {
      const std::size_t page = 2 + rng() % (pages - 2);
      f.seekp(static_cast<std::streamoff>(page * 4096));
      for (int b = 0; b < 4096; ++b)
        f.put(static_cast<char>(rng()));
    }
  }
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 400; i += 3) {
      auto got = disk.lookup("/d/" + std::to_string(i), clock.wall_now());
      if (got) {
        EXPECT_EQ(got->value, value_of(i)) << i;
      }
    }
    disk.insert("/new/" + std::to_string(round), record("fresh"));
    disk.flush();
  }
  SUCCEED() << (disk.stats().available ? "damage unseen or only missed" : "tier off");
}

INSTANTIATE_TEST_SUITE_P(Seeds, DamagedWhileOpenTest, ::testing::Range(1, 9));

// The guard itself: a fault inside it comes back as false, on this thread, and the process and the
// next guarded section go on; a fault nested in another guard returns to the inner one. A fault
// outside every guard is never swallowed.
TEST(FaultGuard, AFaultInAGuardedSectionReturnsFalseAndTheProcessGoesOn) {
#ifdef UNHERD_SANITIZED
  GTEST_SKIP() << "fault containment is not exercised under sanitizers";
#endif
  disk::install_fault_handlers();
  void* page = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  volatile char* mapped = static_cast<volatile char*>(page);
  EXPECT_FALSE(disk::run_guarded([&] { *mapped = 1; }));
  EXPECT_FALSE(disk::run_guarded([] { std::raise(SIGBUS); }));
  bool inner = true;
  EXPECT_TRUE(disk::run_guarded([&] { inner = disk::run_guarded([&] { *mapped = 2; }); }));
  EXPECT_FALSE(inner);
  int ran = 0;
  EXPECT_TRUE(disk::run_guarded([&] { ++ran; }));
  EXPECT_EQ(ran, 1);
  EXPECT_THROW(disk::run_guarded([] { throw std::runtime_error("passes through"); }),
               std::runtime_error);
  EXPECT_DEATH(*static_cast<volatile char*>(page) = 3, "");
  ::munmap(page, 4096);
}

}  // namespace
}  // namespace unherd
