import EgressPosix
import Testing

@testable import EgressProxyCore

/// The budgets derived from the container's memory limit (the limits themselves are read in
/// EgressPosix and tested there, `CgroupTests`).
struct CgroupDefaultsTests {
    @Test func theMemoryBudgetSplitsWhatTheLimitLeavesBetweenBuffersAndPipes() {
        let budget = MemoryBudget(memoryLimit: 256 << 20, loops: 2, bufferSize: 32 << 10, pipeCapacity: 64 << 10)
        // 256 MiB / 2 - 48 MiB = 80 MiB; half each to buffers and pipes, over 2 loops: 20 MiB each.
        #expect(budget.buffersPerLoop == 640 && budget.pipesPerLoop == 320)
        let tiny = MemoryBudget(memoryLimit: 64 << 20, loops: 4, bufferSize: 32 << 10, pipeCapacity: 64 << 10)
        #expect(tiny.buffersPerLoop == MemoryBudget.minimumPerLoop && tiny.pipesPerLoop == MemoryBudget.minimumPerLoop)
        let none = MemoryBudget(memoryLimit: nil, loops: 2, bufferSize: 32 << 10, pipeCapacity: 64 << 10)
        #expect(none.buffersPerLoop == .max && none.pipesPerLoop == .max)
    }
}
